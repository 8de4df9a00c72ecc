"""gin/t5x/: recipes for UPSTREAM T5X (google-research/t5x), which is not installed here.

Upstream includes cannot resolve here, so each file is read statement by statement with gin's own
parser (no configurable is looked up) and checked against gin/t5x/upstream_names.json, the names
read in upstream source. A recipe's include of its family's shared base
(gin/t5x/mt0_xp3_common.gin, found by upstream T5X on --gin_search_paths as the recipe is) is read
in its place. Also: the mT0 values equal our recipes in gin/mt0/, `tasks` imports without our
engine, and scripts/launch_tpu_pod.sh --engine t5x. No upstream T5X run happens here.
"""

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from gin import config_parser
from xmtf_pipeline import gin_config

REPO = Path(__file__).resolve().parent.parent
T5X_GIN = REPO / "gin" / "t5x"
NAMES = json.loads((T5X_GIN / "upstream_names.json").read_text())
SIZES = ("small", "base", "large", "xl", "xxl")
GIN_FILES = sorted(p.name for p in T5X_GIN.glob("*.gin"))
# A family's shared base (mt0_xp3_common.gin): no recipe of its own, checked through its recipes.
SHARED = [n for n in GIN_FILES if Path(n).stem.endswith(gin_config.SHARED_BASE_SUFFIX)]
RECIPES = [n for n in GIN_FILES if n not in SHARED]
LAUNCHER = REPO / "scripts" / "launch_tpu_pod.sh"


class Ref(NamedTuple):
  name: str  # "@scope/name" without the "@" and "()"
  evaluate: bool


class Macro(NamedTuple):
  name: str


class _Delegate(config_parser.ParserDelegate):
  """Keeps references and macros as names: nothing is looked up."""

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return Ref(scoped_configurable_name, evaluate)

  def macro(self, macro_name):
    return Macro(macro_name)


def _statements(path: Path) -> list:
  return list(config_parser.ConfigParser(path.read_text(), _Delegate()))


def _family_include(path: Path, filename: str) -> Path | None:
  """The shared base of ``path``'s family (a file of ours in the same folder) that an include
  names, resolved as upstream T5X does through $XMTF_DIR/gin on --gin_search_paths; None for any
  other include (an upstream file, or our model and run gins, which stay include statements)."""
  target = REPO / "gin" / filename
  if filename in NAMES["files"] or not target.is_file() or target.parent != path.parent:
    return None
  return target


def _expanded(path: Path) -> list[tuple[Path, Any]]:
  """(file, statement) in gin's order, the family's shared base read in place of its include."""
  out = []
  for stmt in _statements(path):
    own = isinstance(stmt, config_parser.IncludeStatement) and _family_include(path, stmt.filename)
    out += _expanded(own) if own else [(path, stmt)]
  return out


def _is_macro(stmt) -> bool:
  return stmt.arg_name == "" and "." not in stmt.selector


def _key(stmt) -> str:
  """'BATCH_SIZE', 'train/utils.DatasetConfig.pack', ..."""
  key = stmt.selector if _is_macro(stmt) else f"{stmt.selector}.{stmt.arg_name}"
  return f"{stmt.scope}/{key}" if stmt.scope else key


def _bindings(path: Path) -> dict[str, Any]:
  out = {}
  for _, stmt in _expanded(path):
    if isinstance(stmt, config_parser.BindingStatement):
      assert _key(stmt) not in out, f"{path.name}: {_key(stmt)} bound twice"
      out[_key(stmt)] = stmt.value
  return out


def _of_type(path: Path, kind) -> list:
  return [s for _, s in _expanded(path) if isinstance(s, kind)]


def _leaves(value):
  if isinstance(value, (Ref, Macro)):
    yield value
  elif isinstance(value, dict):
    for k, v in value.items():
      yield from _leaves(k)
      yield from _leaves(v)
  elif isinstance(value, (list, tuple)):
    for v in value:
      yield from _leaves(v)


def _include_closure(includes: list[str]) -> list[str]:
  seen, todo = [], list(includes)
  while todo:
    name = todo.pop(0)
    if name not in seen:
      seen.append(name)
      todo += NAMES["files"][name].get("includes", [])
  return seen


def _tasks_gin_configurables(module: str) -> set[str]:
  """Names of @gin.configurable functions/classes in tasks/<module>.py (read, not imported)."""
  tree = ast.parse((REPO / Path(*module.split("."))).with_suffix(".py").read_text())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if ast.unparse(target) == "gin.configurable":
          found.add(node.name)
  return found


def test_the_recipes_are_all_there():
  assert RECIPES == sorted([f"mt0_{s}_xp3.gin" for s in SIZES] + ["mt5_base_mc4_pretrain.gin"])
  assert SHARED == ["mt0_xp3_common.gin"]
  for size in SIZES:  # the base is read through them; each includes it after its model gin
    includes = [s.filename for s in _statements(T5X_GIN / f"mt0_{size}_xp3.gin")
                if isinstance(s, config_parser.IncludeStatement)]
    assert includes == [f"t5x/examples/t5/mt5/{size}.gin", "t5x/mt0_xp3_common.gin"], includes


def test_names_list_is_consistent():
  files = NAMES["files"]
  assert NAMES["repository"] == "google-research/t5x"
  for name, info in files.items():
    commits = info["commits"]
    assert all(re.fullmatch(r"[0-9a-f]{40}", c) for c in commits), name
    assert commits or info.get("stored") is False, f"{name}: no commit it was read at"
    for inc in info.get("includes", []):
      assert inc in files, f"{name} includes {inc}, absent from the file inventory"
  for macro, sources in NAMES["macros"].items():
    assert re.fullmatch(r"[A-Z][A-Z0-9_]*", macro)
    for src in sources:
      assert macro in files[src]["macros"], (macro, src)
  for info in NAMES["imports"].values():
    assert info["source"] in files
  for selector, info in NAMES["configurables"].items():
    assert info["source"] in files, selector
    alias, name = selector.rsplit(".", 1)
    assert name == info["name"]
    assert NAMES["imports"][info["module"]]["alias"] == alias, selector
  assert NAMES["pinned_commit"] in files["t5x/configs/runs/finetune.gin"]["commits"]


def _aliases(path: Path) -> dict[str, str]:
  """Name bound by each import of one file -> module (gin scopes imports to their file)."""
  imports = [s for s in _statements(path) if isinstance(s, config_parser.ImportStatement)]
  assert imports and imports[0].module == "__gin__.dynamic_registration", \
      f"{path.name}: T5X gins register dynamically"
  aliases = {}
  for imp in imports[1:]:
    if imp.module.split(".")[0] == "tasks":
      assert (REPO / Path(*imp.module.split("."))).with_suffix(".py").is_file(), imp.format()
    else:
      assert imp.module in NAMES["imports"], f"{imp.format()}: not an import seen upstream"
      assert imp.bound_name() == NAMES["imports"][imp.module]["alias"], imp.format()
    aliases[imp.bound_name()] = imp.module
  return aliases


@pytest.mark.parametrize("gin_file", RECIPES)
def test_binds_only_names_read_upstream(gin_file):
  path = T5X_GIN / gin_file
  expanded = _expanded(path)
  aliases_of = {f: _aliases(f) for f, _ in expanded}
  assert all(f == path or f.name in SHARED for f in aliases_of), "a recipe includes only a base"
  statements = [s for _, s in expanded]

  includes = [s.filename for s in statements if isinstance(s, config_parser.IncludeStatement)]
  assert includes, "a run gin and a model gin are expected"
  for inc in includes:
    assert inc.endswith(".gin") and inc in NAMES["files"], f"include {inc!r} is not an upstream file"
  closure = _include_closure(includes)
  upstream_macros = {m for f in closure for m in NAMES["files"][f].get("macros", [])}

  bindings = [(f, s) for f, s in expanded if isinstance(s, config_parser.BindingStatement)]
  bound_macros = {s.selector for _, s in bindings if _is_macro(s)}
  referenced = {leaf.name for _, s in bindings for leaf in _leaves(s.value)
                if isinstance(leaf, Macro)}
  for file, stmt in bindings:
    aliases = aliases_of[file]
    where = f"{file.name}:{stmt.location.line_num} {_key(stmt)}"
    if _is_macro(stmt):
      assert stmt.selector in NAMES["macros"], f"{where}: macro not seen upstream"
      # A macro no included upstream file defines does nothing unless this file uses it.
      assert stmt.selector in upstream_macros or stmt.selector in referenced, f"{where}: dead macro"
    else:
      assert stmt.selector in NAMES["configurables"], f"{where}: configurable not seen upstream"
      assert stmt.arg_name in NAMES["configurables"][stmt.selector]["params"], \
          f"{where}: parameter not seen upstream"
      alias = stmt.selector.split(".")[0]
      assert aliases.get(alias) == NAMES["configurables"][stmt.selector]["module"], \
          f"{where}: {alias!r} is not imported in this file"
    for leaf in _leaves(stmt.value):
      if isinstance(leaf, Macro):
        assert leaf.name in bound_macros or leaf.name in NAMES["macros"], f"{where}: %{leaf.name}"
        continue
      name = leaf.name.rsplit("/", 1)[-1]
      alias, attr = name.split(".", 1)
      module = aliases.get(alias)
      assert module is not None, f"{where}: @{name} uses {alias!r}, not imported here"
      if module.split(".")[0] == "tasks":
        assert attr in _tasks_gin_configurables(module), f"{where}: @{name} is not configurable"
      else:
        assert name in NAMES["configurables"], f"{where}: @{name} not seen upstream"

  # Only MODEL_DIR is left to the command line.
  required = {m for f in closure for m in NAMES["files"][f].get("required_macros", [])}
  assert "MODEL_DIR" in required, "MODEL_DIR comes from the included run gin"
  assert "MODEL_DIR" not in bound_macros, "MODEL_DIR is for the command line"
  assert required - {"MODEL_DIR"} <= bound_macros, required - bound_macros - {"MODEL_DIR"}


def test_includes_resolve_as_upstream_t5x_resolves_them(tmp_path):
  """gin itself, with upstream T5X's search paths (cwd, $T5X_DIR, $XMTF_DIR/gin), finds the shared
  base through $XMTF_DIR/gin and the upstream files in $T5X_DIR (stubs here), in the order the
  recipe's values need: the model gin, then finetune.gin, then ours, which override it."""
  for size in SIZES:
    model = tmp_path / "t5x" / "examples" / "t5" / "mt5" / f"{size}.gin"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_text(f"STUB_MODEL = '{size}'\n")
  run = tmp_path / "t5x" / "configs" / "runs" / "finetune.gin"
  run.parent.mkdir(parents=True)
  run.write_text("STUB_RUN = 1\nBATCH_SIZE = 128\nTRAIN_STEPS = %gin.REQUIRED\n")
  # A fresh process: t5x is absent here, so its imports and configurables are skipped
  # (skip_unknown), which holds only while no configurable of the same name (our engine's
  # network.T5Config) is registered; macros are still bound.
  code = textwrap.dedent(f"""
      import json
      import gin
      gin.config._LOCATION_PREFIXES[:] = ["", {str(tmp_path)!r}, {str(REPO / "gin")!r}]
      out = {{}}
      for size in {list(SIZES)!r}:
        gin.clear_config()
        tree = gin.parse_config_file(f"t5x/mt0_{{size}}_xp3.gin", skip_unknown=True)
        out[size] = {{
            "includes": [[i.filename, [j.filename for j in i.includes]] for i in tree.includes],
            "macros": {{scope: repr(v["value"]) for (scope, sel), v in gin.config._CONFIG.items()
                       if sel == "gin.macro"}}}}
      print(json.dumps(out))
      """)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300)  # cwd: as scripts/launch_tpu_pod.sh runs t5x.train
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  for size in SIZES:
    assert got[size]["includes"] == [[f"t5x/examples/t5/mt5/{size}.gin", []],
                                     ["t5x/mt0_xp3_common.gin", ["t5x/configs/runs/finetune.gin"]]]
    macros = got[size]["macros"]
    assert macros["STUB_MODEL"] == repr(size) and macros["STUB_RUN"] == "1"
    ours = _bindings(T5X_GIN / f"mt0_{size}_xp3.gin")
    assert macros["BATCH_SIZE"] == "512" and macros["TRAIN_STEPS"] == repr(ours["TRAIN_STEPS"])


def test_mt0_large_values():
  got = _bindings(T5X_GIN / "mt0_large_xp3.gin")
  includes = [s.filename for s in _of_type(T5X_GIN / "mt0_large_xp3.gin",
                                           config_parser.IncludeStatement)]
  assert includes == ["t5x/examples/t5/mt5/large.gin", "t5x/configs/runs/finetune.gin"]
  assert got["BATCH_SIZE"] == 512
  assert got["TASK_FEATURE_LENGTHS"] == {"inputs": 1024, "targets": 1024}
  assert got["train/utils.DatasetConfig.pack"] is False
  assert got["train_eval/utils.DatasetConfig.pack"] is False
  assert got["LOSS_NORMALIZING_FACTOR"] == "AVERAGE_PER_SEQUENCE"
  assert got["models.EncoderDecoderModel.loss_normalizing_factor"] == Macro("LOSS_NORMALIZING_FACTOR")
  assert got["TRAIN_STEPS"] == 1_025_000
  assert got["INITIAL_CHECKPOINT_PATH"] == \
      "gs://t5-data/pretrained_models/t5x/mt5_large/checkpoint_1000000"
  assert got["USE_CACHED_TASKS"] is False
  assert got["MIXTURE_OR_TASK_NAME"] == "xp3"
  assert got["partitioning.PjitPartitioner.num_partitions"] == 1
  assert got["DROPOUT_RATE"] == 0.1
  assert got["network.T5Config.dropout_rate"] == Macro("DROPOUT_RATE")
  assert got["VOCABULARY"] == Ref("vocab.mt5_vocabulary", True)
  assert "MODEL_DIR" not in got


# Our recipe's bindings that T5X spells differently; any other name is the same macro in both.
OURS_TO_T5X = {
    "PACK": ["train/utils.DatasetConfig.pack", "train_eval/utils.DatasetConfig.pack"],
    "NUM_PARTITIONS": ["partitioning.PjitPartitioner.num_partitions"],
    "SAVE_PERIOD": ["utils.SaveCheckpointConfig.period"],
    "KEEP_CHECKPOINTS": ["utils.SaveCheckpointConfig.keep"],
    "COMPUTE_DTYPE": ["network.T5Config.dtype"],
    "schedules.create_learning_rate_scheduler.factors":
        ["utils.create_learning_rate_scheduler.factors"],
    "schedules.create_learning_rate_scheduler.base_learning_rate":
        ["utils.create_learning_rate_scheduler.base_learning_rate"],
}
# Bound in gin/t5x only: values our engine's gin/runs/finetune.gin or models hold (Adafactor,
# USE_CACHED_TASKS), wiring that does not depend on the unread mt5/base.gin, and no infer_eval.
T5X_ONLY = {
    "adafactor.Adafactor.decay_rate", "adafactor.Adafactor.step_offset", "USE_CACHED_TASKS",
    "network.T5Config.dropout_rate", "VOCABULARY", "models.EncoderDecoderModel.z_loss",
    "models.EncoderDecoderModel.label_smoothing",
    "models.EncoderDecoderModel.loss_normalizing_factor",
    "models.EncoderDecoderModel.input_vocabulary", "models.EncoderDecoderModel.output_vocabulary",
    "train_script.train.infer_eval_dataset_cfg",
}


# Our engine's memory options (same numerics), which T5X's network lacks: XLA rematerialises there.
OURS_ONLY = {"network.T5Config.remat_policy", "network.T5Config.scan_layers",
             "models.EncoderDecoderModel.loss_chunk_length"}


@pytest.mark.parametrize("size", SIZES)
def test_values_equal_our_recipe(size):
  ours = _bindings(REPO / "gin" / "mt0" / f"mt0_{size}_xp3.gin")
  ours = {k: v for k, v in ours.items() if k not in OURS_ONLY}
  theirs = _bindings(T5X_GIN / f"mt0_{size}_xp3.gin")
  mapped = set()
  for key, value in ours.items():
    for t5x_key in OURS_TO_T5X.get(key, [key]):
      assert t5x_key in theirs, f"our {key} has no counterpart {t5x_key} in gin/t5x"
      assert theirs[t5x_key] == value, (key, t5x_key, value, theirs[t5x_key])
      mapped.add(t5x_key)
  assert set(theirs) - mapped == T5X_ONLY
  assert theirs["adafactor.Adafactor.decay_rate"] == 0.8
  assert theirs["adafactor.Adafactor.step_offset"] == 0
  assert theirs["train_script.train.infer_eval_dataset_cfg"] is None
  model = [s.filename for s in _of_type(T5X_GIN / f"mt0_{size}_xp3.gin",
                                        config_parser.IncludeStatement)][0]
  our_model = [s.filename for s in _of_type(REPO / "gin" / "mt0" / f"mt0_{size}_xp3.gin",
                                            config_parser.IncludeStatement)][0]
  assert our_model == f"models/mt5_{size}.gin" and model == f"t5x/examples/t5/mt5/{size}.gin"


def test_mc4_pretrain_values():
  got = _bindings(T5X_GIN / "mt5_base_mc4_pretrain.gin")
  includes = [s.filename for s in _of_type(T5X_GIN / "mt5_base_mc4_pretrain.gin",
                                           config_parser.IncludeStatement)]
  assert includes == ["t5x/examples/t5/mt5/base.gin", "t5x/configs/runs/pretrain.gin"]
  assert got["MIXTURE_OR_TASK_NAME"] == "mc4"
  # mT5: length-1024 inputs; 229 targets is what span corruption (15%, mean span 3) leaves.
  assert got["TASK_FEATURE_LENGTHS"] == {"inputs": 1024, "targets": 229}
  assert got["train/utils.DatasetConfig.batch_size"] == 1024
  assert got["TRAIN_STEPS"] == 1_000_000
  assert got["DROPOUT_RATE"] == 0.0
  assert got["train_script.train.partitioner"] == Ref("partitioning.PjitPartitioner", True)


def _tasks_modules() -> list[str]:
  mods = {"tasks.mixtures"}
  for name in GIN_FILES:
    for imp in _of_type(T5X_GIN / name, config_parser.ImportStatement):
      if imp.module.split(".")[0] == "tasks":
        mods.add(imp.module)
  return sorted(mods)


def _modules_after(*stages: list[str]) -> list[set[str]]:
  """One fresh process imports each stage's modules in turn: sys.modules after each stage."""
  code = "import json, sys\n" + "".join(
      "".join(f"import {m}\n" for m in imports) + "print(json.dumps(sorted(sys.modules)))\n"
      for imports in stages)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return [set(json.loads(line)) for line in out.stdout.strip().splitlines()[-len(stages):]]


def test_tasks_import_without_our_engine():
  """What the gin files import loads no xmtf_pipeline, no optax, and no flax beyond seqio's own."""
  mods = _tasks_modules()
  assert {"tasks.xp3", "tasks.mc4", "tasks.vocab"} <= set(mods)
  # One fresh process: seqio alone, then the tasks modules on top of it. Whatever the tasks
  # modules load imported alone is loaded here too (they import seqio themselves), so each
  # check below fails wherever it failed with the two imports in two processes.
  seqio_alone, with_tasks = _modules_after(["seqio"], mods)
  assert set(mods) <= with_tasks
  assert not [m for m in with_tasks if m.split(".")[0] in ("xmtf_pipeline", "optax")]
  flax = {m for m in with_tasks if m.split(".")[0] == "flax"}
  assert flax <= seqio_alone, sorted(flax - seqio_alone)


def test_model_vocabulary_passes_t5x_vocab_check():
  """The gin files' VOCABULARY, evaluated by gin, equals the xp3 and mc4 tasks' vocabulary under
  `!=` (T5X's verify_matching_vocabs); a plain SentencePieceVocabulary of mT5's file does not."""
  keep = ("from __gin__ ", "import tasks", "from tasks ", "VOCABULARY =")
  lines = [ln for ln in (T5X_GIN / "mt0_xp3_common.gin").read_text().splitlines()
           if ln.startswith(keep)]
  assert len(lines) == 4, lines
  code = textwrap.dedent(f"""
      import gin, seqio, tasks.mc4, tasks.xp3
      from tasks import vocab
      @gin.configurable  # as T5X registers train() in __main__ for `import __main__ as train_script`
      def holder(v=None):
        return v
      gin.parse_config({lines!r} + ["import __main__ as main", "main.holder.v = %VOCABULARY"])
      model_vocab = holder()
      for name in ("xp3", "mc4"):
        features = seqio.get_mixture_or_task(name).output_features
        for key in ("inputs", "targets"):
          assert not (features[key].vocabulary != model_vocab), (name, key)
      plain = seqio.SentencePieceVocabulary(vocab.MT5_SPM_GCS)
      assert features["targets"].vocabulary != plain
      print("ok")
      """)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def _launch(*args: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in ("T5X_COMMIT", "REMOTE_DIR")}
  return subprocess.run(["bash", str(LAUNCHER), *args], env=env, capture_output=True, text=True,
                        timeout=30)


def _remote(stdout: str) -> str:
  lines = stdout.splitlines()
  assert lines[0].startswith("gcloud compute tpus tpu-vm ssh my-v4-64 --zone us-central2-b "
                             "--worker=all --command ")
  assert lines[1].startswith("# per-worker command")
  return lines[2]


def test_launcher_t5x_dry_run():
  out = _launch("--engine", "t5x", "--dry_run", "my-v4-64", "us-central2-b", "--",
                "--gin_file=t5x/mt0_large_xp3.gin", '--gin.MODEL_DIR="gs://bucket/mt0_large"')
  assert out.returncode == 0, out.stderr
  remote = _remote(out.stdout)
  for piece in ("cd ~/xmtf-pipeline && ",
                "git clone --quiet https://github.com/google-research/t5x",
                f"checkout --quiet {NAMES['pinned_commit']}",
                '-m pip install --quiet -e "${T5X_DIR}[tpu]"',
                'PYTHONPATH="$PWD"',
                '-m t5x.train --gin_search_paths="$T5X_DIR,$PWD/gin"',
                "--gin_file=t5x/mt0_large_xp3.gin",
                '--gin.MODEL_DIR=\\"gs://bucket/mt0_large\\"'):
    assert piece in remote, (piece, remote)
  assert "xmtf train" not in remote and "install.sh" not in remote
  # --gin_file is resolved against <repo>/gin, and the command is valid shell.
  assert (REPO / "gin" / "t5x" / "mt0_large_xp3.gin").is_file()
  assert subprocess.run(["bash", "-n", "-c", remote]).returncode == 0
  # The same command, shell-quoted, is what gcloud runs.
  assert "t5x.train\\ --gin_search_paths" in out.stdout.splitlines()[0]


def test_launcher_t5x_commit_override():
  env_run = subprocess.run(
      ["bash", str(LAUNCHER), "--engine=t5x", "--dry_run", "my-v4-64", "us-central2-b", "--"],
      env=dict(os.environ, T5X_COMMIT="origin/main"), capture_output=True, text=True, timeout=30)
  assert env_run.returncode == 0, env_run.stderr
  assert "checkout --quiet origin/main" in _remote(env_run.stdout)


@pytest.mark.parametrize("engine", [[], ["--engine", "xmtf"], ["--engine=xmtf"]])
def test_launcher_xmtf_dry_run(engine):
  out = _launch("--dry_run", *engine, "my-v4-64", "us-central2-b", "--",
                "--gin_file=mt0/mt0_large_xp3.gin")
  assert out.returncode == 0, out.stderr
  remote = _remote(out.stdout)
  assert remote.startswith("cd ~/xmtf-pipeline && XMTF_JAX_EXTRA=tpu bash scripts/install.sh && ")
  assert ".venv/bin/xmtf train --gin_file=mt0/mt0_large_xp3.gin" in remote
  assert "t5x" not in remote
  assert subprocess.run(["bash", "-n", "-c", remote]).returncode == 0


@pytest.mark.parametrize("args", [["--engine", "pax"], ["--engine=T5X"], ["--engine"]])
def test_launcher_rejects_a_bad_engine(args):
  out = _launch(*args, "--dry_run", "my-v4-64", "us-central2-b", "--", "--gin_file=x.gin")
  assert out.returncode == 2 and not out.stdout
  if len(args) == 2 or "=" in args[0]:
    assert "--engine must be 'xmtf' or 't5x', got" in out.stderr, out.stderr
