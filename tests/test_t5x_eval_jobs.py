"""The eval job (scripts/eval.sh) and the upstream-T5X eval/infer recipes (gin/t5x/runs/).

Always run: the recipes bind only names read in upstream T5X (gin/t5x/upstream_names.json) and
keep our eval's values; scripts/eval.sh and the launchers' `--job` print the right commands
(--dry_run) for both engines and all three launchers, and refuse bad arguments;
scripts/t5x_eval_report.py turns T5X metric files into the median/max over prompts; and
`scripts/eval.sh --engine xmtf` (the command it prints, run here) evaluates a tiny checkpoint.

With XMTF_T5X_DIR (a google-research/t5x tree at the pinned commit, as tests/test_upstream_t5x.py)
upstream T5X itself runs: `t5x.train` 3 steps on the sample, then `scripts/eval.sh --engine t5x`
(python -m t5x.eval + the report) and `python -m t5x.infer` on that checkpoint, and our engine's
`xmtf eval` on the same checkpoint must give the same accuracy per prompt.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import test_upstream_t5x as upstream
from eval_testlib import write_checkpoints

from gin import config_parser

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "gin" / "t5x" / "runs"
NAMES = json.loads((REPO / "gin" / "t5x" / "upstream_names.json").read_text())
EVAL_SH = REPO / "scripts" / "eval.sh"
REPORT = REPO / "scripts" / "t5x_eval_report.py"
BUNDLED = REPO / "tasks" / "data" / "heldout"
SAMPLE_SPM = REPO / "tasks" / "data" / "spm" / "xp3_sample.model"


class _Delegate(config_parser.ParserDelegate):
  def configurable_reference(self, scoped_configurable_name, evaluate):
    return ("ref", scoped_configurable_name)

  def macro(self, macro_name):
    return ("macro", macro_name)


def _statements(path: Path) -> list:
  return list(config_parser.ConfigParser(path.read_text(), _Delegate()))


def _leaves(value):
  if isinstance(value, tuple) and len(value) == 2 and value[0] in ("ref", "macro"):
    yield value
  elif isinstance(value, dict):
    for k, v in value.items():
      yield from _leaves(k)
      yield from _leaves(v)
  elif isinstance(value, (list, tuple)):
    for v in value:
      yield from _leaves(v)


def _bindings(path: Path) -> dict:
  out = {}
  for s in _statements(path):
    if isinstance(s, config_parser.BindingStatement):
      key = s.selector if (s.arg_name == "" and "." not in s.selector) else \
          f"{s.selector}.{s.arg_name}"
      assert key not in out, f"{path.name}: {key} bound twice"
      out[key] = s.value
  return out


# --------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("gin_file,run_gin,left_required", [
    ("eval_heldout.gin", "t5x/configs/runs/eval.gin", {"CHECKPOINT_PATH", "EVAL_OUTPUT_DIR"}),
    ("infer.gin", "t5x/configs/runs/infer.gin",
     {"CHECKPOINT_PATH", "INFER_OUTPUT_DIR", "MIXTURE_OR_TASK_NAME"}),
])
def test_recipe_binds_only_names_read_upstream(gin_file, run_gin, left_required):
  statements = _statements(RUNS / gin_file)
  imports = [s for s in statements if isinstance(s, config_parser.ImportStatement)]
  assert imports[0].module == "__gin__.dynamic_registration"
  aliases = {}
  for imp in imports[1:]:
    if imp.module.split(".")[0] == "tasks":
      assert (REPO / Path(*imp.module.split("."))).with_suffix(".py").is_file(), imp.format()
    else:
      assert imp.module in NAMES["imports"], f"{imp.format()}: not an import seen upstream"
      assert imp.bound_name() == NAMES["imports"][imp.module]["alias"], imp.format()
    aliases[imp.bound_name()] = imp.module
  includes = [s.filename for s in statements if isinstance(s, config_parser.IncludeStatement)]
  assert includes == [run_gin]
  assert NAMES["pinned_commit"] in NAMES["files"][run_gin]["commits"]
  bound = set()
  for stmt in (s for s in statements if isinstance(s, config_parser.BindingStatement)):
    where = f"{gin_file}:{stmt.location.line_num}"
    if stmt.arg_name == "" and "." not in stmt.selector:
      assert stmt.selector in NAMES["macros"], f"{where}: macro {stmt.selector} not seen upstream"
      bound.add(stmt.selector)
    else:
      conf = NAMES["configurables"].get(stmt.selector)
      assert conf and stmt.arg_name in conf["params"], f"{where}: {stmt.selector}.{stmt.arg_name}"
      assert aliases.get(stmt.selector.split(".")[0]) == conf["module"], where
    for kind, name in _leaves(stmt.value):
      if kind == "macro":
        assert name in NAMES["macros"], f"{where}: %{name}"
      else:
        alias, attr = name.split(".", 1)
        assert alias in aliases, f"{where}: @{name}"
        assert aliases[alias].startswith("tasks.") or name in NAMES["configurables"], where
  required = set(NAMES["files"][run_gin]["required_macros"])
  assert required - bound == left_required, required - bound
  # The model gin comes first on the command line; these rebind what mt5/base.gin sets.
  assert {"DROPOUT_RATE", "VOCABULARY"} <= bound


def test_eval_recipe_keeps_our_eval_values():
  ours = _bindings(REPO / "gin" / "runs" / "eval.gin")
  t5x = _bindings(RUNS / "eval_heldout.gin")
  assert t5x["TASK_FEATURE_LENGTHS"] == ours["TASK_FEATURE_LENGTHS"] == \
      {"inputs": 2048, "targets": 256}
  assert t5x["DROPOUT_RATE"] == ours["DROPOUT_RATE"] == 0.0
  assert t5x["VOCABULARY"] == ours["VOCABULARY"] == ("ref", "vocab.mt5_vocabulary")
  assert t5x["utils.DatasetConfig.split"] == "validation"
  assert t5x["MIXTURE_OR_TASK_NAME"] == "heldout"
  assert t5x["network.T5Config.dropout_rate"] == ("macro", "DROPOUT_RATE")


def test_heldout_tasks_carry_the_score_metric():
  """What t5x.eval needs: score metric_fns (seqio runs them on the model's score_batch), and
  the rank rows seqio's rank_classification lays out; the metric is our engine's rule."""
  import seqio

  from tasks import heldout
  for suite in ("heldout", "heldout_bundled"):
    tasks = seqio.get_mixture_or_task(suite).tasks
    assert len(tasks) == len(heldout.resolve_suite(suite))
    for task in tasks:
      assert task.score_metric_fns == [heldout.rank_accuracy], task.name
      assert not task.output_features["inputs"].add_eos and task.output_features["targets"].add_eos
  splits = {tuple(t.splits) for t in seqio.get_mixture_or_task("heldout").tasks}
  assert splits == {("validation",), ("test",)}  # eval.sh runs the 'test' pass for XWinograd
  targets = [(0, 0, False), (0, 1, True), (1, 0, True), (1, 1, False), (1, 2, False)]
  assert heldout.rank_accuracy(targets, [-3.0, -2.0, -1.0, -5.0, -0.5]) == {"accuracy": 50.0}


# --------------------------------------------------------------------------- eval.sh


def _sh(*args, env=None, script=EVAL_SH):
  base = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "T5X_DIR")}
  return subprocess.run(["bash", str(script), *args], env=dict(base, **(env or {})),
                        capture_output=True, text=True, timeout=60)


def test_eval_sh_xmtf_local_dry_run():
  out = _sh("--dry_run", "mt5_large", "/ck/checkpoint_1025000", "/out", "heldout_l1", "--",
            "--gin.BATCH_SIZE=8")
  assert out.returncode == 0, out.stderr
  cmd = shlex.split(out.stdout)
  assert cmd == [str(REPO / ".venv/bin/xmtf"), "eval", "--gin_file=models/mt5_large.gin",
                 "--gin_file=runs/eval.gin", '--gin.CHECKPOINT_PATH="/ck/checkpoint_1025000"',
                 '--gin.EVAL_OUTPUT_DIR="/out"', '--gin.MIXTURE_OR_TASK_NAME="heldout_l1"',
                 "--gin.BATCH_SIZE=8"]
  # DRY_RUN=1 (as finetune.sh and export_to_hf.sh) works too; the suite defaults to heldout
  env_dry = _sh("mt5_large", "/c", "/o", env={"DRY_RUN": "1"})
  assert env_dry.stdout == _sh("--dry_run", "mt5_large", "/c", "/o").stdout
  assert '--gin.MIXTURE_OR_TASK_NAME="heldout"' in shlex.split(env_dry.stdout)


@pytest.mark.parametrize("suite,splits", [("heldout", ["validation", "test"]),
                                          ("heldout_l1", ["validation", "test"]),
                                          ("heldout_bundled", ["validation"]),
                                          ("heldout_xwinograd", ["test"]),
                                          ("heldout_copa_best_option", ["validation"])])
def test_eval_sh_t5x_local_dry_run(suite, splits):
  out = _sh("--engine", "t5x", "--dry_run", "mt5_xl", "gs://b/ck", "gs://b/eval", suite, "--",
            "--gin.utils.DatasetConfig.batch_size=8", env={"T5X_DIR": "/opt/t5x"})
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert len(lines) == len(splits) + 1
  for line, split in zip(lines, splits):
    cmd = shlex.split(line)
    assert cmd[0] == "env" and cmd[1].startswith(f"PYTHONPATH=/opt/t5x:{REPO}")
    i = cmd.index("-m")
    assert cmd[i + 1] == "t5x.eval"
    assert cmd[i + 2:] == [
        f"--gin_search_paths=/opt/t5x,{REPO}/gin", "--gin_file=t5x/examples/t5/mt5/xl.gin",
        "--gin_file=t5x/runs/eval_heldout.gin",
        "--gin_bindings=from __gin__ import dynamic_registration",
        "--gin_bindings=from t5x import utils", '--gin.CHECKPOINT_PATH="gs://b/ck"',
        '--gin.EVAL_OUTPUT_DIR="gs://b/eval"', f'--gin.MIXTURE_OR_TASK_NAME="{suite}"',
        f'--gin.utils.DatasetConfig.split="{split}"', "--gin.utils.DatasetConfig.batch_size=8"]
  assert shlex.split(lines[-1])[-2:] == [str(REPORT), "gs://b/eval"]


def test_eval_sh_through_the_launchers_dry_run():
  tpu = _sh("--engine", "t5x", "--launcher", "tpu_pod", "--tpu", "my-v4-64", "--zone",
            "us-central2-b", "--dry_run", "mt5_large", "gs://b/ck", "gs://b/eval")
  assert tpu.returncode == 0, tpu.stderr
  remotes = [tpu.stdout.splitlines()[i + 1] for i, line in enumerate(tpu.stdout.splitlines())
             if line == "# per-worker command (engine t5x, job eval):"]
  assert len(remotes) == 2  # the 'validation' pass, then XWinograd's 'test'
  for remote, split in zip(remotes, ("validation", "test")):
    assert '-m t5x.eval --gin_search_paths="$T5X_DIR,$PWD/gin"' in remote
    assert "--gin_file=t5x/runs/eval_heldout.gin" in remote
    assert f'--gin.utils.DatasetConfig.split=\\"{split}\\"' in remote
    assert subprocess.run(["bash", "-n", "-c", remote]).returncode == 0
  assert tpu.stdout.strip().splitlines()[-1].endswith(f"{REPORT} gs://b/eval")

  tpu = _sh("--launcher=tpu_pod", "--tpu", "t", "--zone", "z", "--dry_run", "mt5_xl", "/c", "/o")
  assert tpu.returncode == 0, tpu.stderr
  assert ".venv/bin/xmtf eval --gin_file=models/mt5_xl.gin --gin_file=runs/eval.gin" in tpu.stdout

  slurm = _sh("--launcher", "slurm", "--dry_run", "mt5_xl", "/c", "/o", "heldout_bundled")
  assert slurm.returncode == 0, slurm.stderr
  assert slurm.stdout.startswith("srun --ntasks=1 ") and "--process_count=1" in slurm.stdout
  assert "xmtf\\'\\ eval\\ --multiprocess_gpu" in slurm.stdout
  assert "--gin_file=models/mt5_xl.gin\\ --gin_file=runs/eval.gin" in slurm.stdout
  slurm = _sh("--engine", "t5x", "--launcher", "slurm", "--dry_run", "mt5_xl", "/c", "/o")
  assert slurm.returncode == 0, slurm.stderr
  assert shlex.split(slurm.stdout) == ["srun", "--ntasks=1", "--nodes=1", "bash", str(EVAL_SH),
                                       "--engine", "t5x", "mt5_xl", "/c", "/o", "heldout", "--"]


@pytest.mark.parametrize("args,message", [
    (["--engine", "pax", "mt5_xl", "/c", "/o"], "--engine must be 'xmtf' or 't5x'"),
    (["--launcher", "k8s", "mt5_xl", "/c", "/o"], "--launcher must be"),
    (["--launcher", "tpu_pod", "--tpu", "t", "mt5_xl", "/c", "/o"], "needs --tpu NAME and --zone"),
    (["--engine", "t5x", "mt5_tiny", "/c", "/o"], "--engine t5x takes MODEL mt5_small"),
    (["--engine", "t5x", "mt5_xl", "/c", "/o", "copa,cb"], "not a list"),
    (["--engine", "t5x", "mt5_xl", "/c", "/o"], "set T5X_DIR"),
    (["mt5_xl", "/c"], ""),
])
def test_eval_sh_refuses_bad_arguments(args, message):
  out = _sh(*args)
  assert out.returncode == 2 and not out.stdout, out
  assert message in out.stderr


@pytest.mark.parametrize("job", ["eval", "infer"])
def test_launchers_take_a_job(job):
  pod = _sh("--dry_run", "--job", job, "t", "z", "--", "--gin_file=runs/x.gin",
            script=REPO / "scripts" / "launch_tpu_pod.sh")
  assert pod.returncode == 0 and f".venv/bin/xmtf {job} --gin_file=runs/x.gin" in pod.stdout
  pod = _sh("--engine", "t5x", f"--job={job}", "--dry_run", "t", "z", "--",
            script=REPO / "scripts" / "launch_tpu_pod.sh")
  assert pod.returncode == 0 and f"-m t5x.{job} --gin_search_paths" in pod.stdout
  slurm = _sh("--job", job, "--dry_run", "--", "--gin_file=runs/x.gin",
              script=REPO / "scripts" / "launch_slurm.sh",
              env={"SLURM_NTASKS": "4"})  # eval and infer: one process per node, as train
  assert slurm.returncode == 0 and slurm.stdout.startswith("srun --ntasks=4 "), slurm.stdout
  assert f"xmtf\\'\\ {job}\\ --multiprocess_gpu" in slurm.stdout
  assert "--process_count=4" in slurm.stdout and "--gin_file=runs/x.gin" in slurm.stdout
  train = _sh("--dry_run", "--", "--gin_file=runs/x.gin", script=REPO / "scripts" / "launch_slurm.sh",
              env={"SLURM_NTASKS": "4"})
  assert train.stdout.startswith("srun --ntasks=4 ") and "--process_count=4" in train.stdout
  for script in ("launch_tpu_pod.sh", "launch_slurm.sh"):
    bad = _sh("--job", "export", "--dry_run", "t", "z", "--", script=REPO / "scripts" / script)
    assert bad.returncode == 2 and "--job must be 'train', 'eval' or 'infer'" in bad.stderr


# --------------------------------------------------------------------------- the report


def _fake_t5x_eval(folder: Path, accuracies: dict[str, float], step: int = 7) -> None:
  """T5X/seqio's JSONLogger layout: <task>-metrics.jsonl and <task>-<step>.jsonl per task."""
  out = folder / "inference_eval"
  out.mkdir(parents=True)
  for task, acc in accuracies.items():
    (out / f"{task}-metrics.jsonl").write_text(
        json.dumps({"step": 1, "accuracy": 0.0}) + "\n" + json.dumps({"step": step,
                                                                      "accuracy": acc}) + "\n")
    # 4 examples x 2 choices; the correct choice wins in round(acc / 25) of them
    rows, wins = [], round(acc / 25)
    for ex in range(4):
      for choice in range(2):
        correct = choice == 1
        score = (-1.0 if correct else -2.0) if ex < wins else (-2.0 if correct else -1.0)
        rows.append({"input": {}, "target": [ex, choice, correct], "score": score})
    (out / f"{task}-{step:06d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _report(*args):
  return subprocess.run([sys.executable, str(REPORT), *map(str, args)], capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def _report_here(capsys, *args):
  """The script's main() in this process: (exit status, stdout, stderr). Each test below runs
  the script once as its own process (`python scripts/t5x_eval_report.py`, exit status via
  sys.exit) and its further calls here, sparing a TensorFlow import per call."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("t5x_eval_report", REPORT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  capsys.readouterr()
  rc = module.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return rc, out, err


def test_report_gives_median_and_max_over_prompts(tmp_path, capsys):
  accs = {"heldout_copa_best_option": 75.0, "heldout_copa_cause_effect": 50.0,
          "heldout_copa_i_am_hesitating": 100.0, "heldout_cb_gpt_3_style": 25.0}
  _fake_t5x_eval(tmp_path, accs)
  out = _report(tmp_path, "--no_charts", "--model_name", "mt0-test")
  assert out.returncode == 0, out.stderr
  assert "at step 7: 4 (dataset, config, prompt) entries" in out.stdout
  summary = json.loads((tmp_path / "results.json").read_text())
  by = {(c["dataset"], c["config"]): c for c in summary["configs"]}
  assert by["copa", "copa"]["median"] == 75.0 and by["copa", "copa"]["max"] == 100.0
  assert by["copa", "copa"]["num_prompts"] == 3 and by["copa", "copa"]["num_examples"] == 4
  assert by["cb", "cb"]["max"] == 25.0
  assert summary["source"] == {"engine": "t5x", "eval_dir": str(tmp_path), "step": 7}
  assert "name: mt0-test" in (tmp_path / "model_index.yaml").read_text()
  assert "| copa | copa | 75.00 | 100.00 |" in (tmp_path / "results.md").read_text()
  # an earlier step on request
  rc, _, err = _report_here(capsys, tmp_path, "--step", "1", "--no_charts", "--output_dir",
                           tmp_path / "s1")
  assert rc == 0, err
  assert json.loads((tmp_path / "s1" / "results.json").read_text())["configs"][0]["max"] == 0.0


def test_report_refuses_a_metric_its_scores_contradict_and_an_empty_folder(tmp_path, capsys):
  _fake_t5x_eval(tmp_path / "a", {"heldout_copa_best_option": 75.0})
  metrics = tmp_path / "a" / "inference_eval" / "heldout_copa_best_option-metrics.jsonl"
  metrics.write_text(json.dumps({"step": 7, "accuracy": 50.0}) + "\n")
  out = _report(tmp_path / "a", "--no_charts")
  assert out.returncode == 1 and "logged accuracy 50.0, its scored rows give 75.0" in out.stderr
  rc, _, err = _report_here(capsys, tmp_path / "empty", "--no_charts")
  assert rc == 1 and "No heldout_*-metrics.jsonl" in err


# --------------------------------------------------------------------------- real runs


def _run_printed(eval_args: list[str], env: dict) -> subprocess.CompletedProcess:
  """Runs the command `scripts/eval.sh --dry_run` prints (running eval.sh itself would first
  call scripts/install.sh, which may pip-install)."""
  printed = _sh("--dry_run", *eval_args)
  assert printed.returncode == 0, printed.stderr
  cmd = shlex.split(printed.stdout)
  assert cmd[:2] == [str(REPO / ".venv/bin/xmtf"), "eval"]
  return subprocess.run([sys.executable, "-m", "xmtf_pipeline.cli", *cmd[1:]], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)


def test_eval_sh_xmtf_runs_a_tiny_checkpoint(tmp_path):
  from xmtf_pipeline import gin_config
  write_checkpoints(tmp_path / "run", gin_config.load_model_config("mt5_tiny"), steps=(10,))
  out_dir = tmp_path / "eval"
  out = _run_printed(
      ["mt5_tiny", str(tmp_path / "run" / "checkpoint_10"), str(out_dir), "heldout_copa", "--",
       f'--gin.tasks.vocab.mt5_vocabulary_config.path="{SAMPLE_SPM}"',
       f'--gin.DATA_DIR="{BUNDLED}"', "--gin.EVALUATOR_NUM_EXAMPLES=4",
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 128, 'targets': 32}", "--gin.BATCH_SIZE=8",
       "--gin.WRITE_CHARTS=False"], dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
  summary = json.loads((out_dir / "results.json").read_text())
  assert [(c["dataset"], c["num_prompts"], c["num_examples"]) for c in summary["configs"]] == \
      [("copa", 5, 4)]
  assert all(0.0 <= p["accuracy"] <= 100.0 for p in summary["prompts"])
  assert (out_dir / "model_index.yaml").is_file()


TINY_T5X = ["--gin_bindings=from t5x.examples.t5 import network",
            "--gin_bindings=import tasks.heldout",
            "--gin.network.T5Config.vocab_size=512", "--gin.network.T5Config.emb_dim=32",
            "--gin.network.T5Config.num_heads=2", "--gin.network.T5Config.head_dim=16",
            "--gin.network.T5Config.mlp_dim=64", "--gin.network.T5Config.num_encoder_layers=2",
            "--gin.network.T5Config.num_decoder_layers=2",
            f"--gin.tasks.vocab.mt5_vocabulary_config.path='{SAMPLE_SPM}'",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 64}",
            "--gin.utils.DatasetConfig.batch_size=8"]


@pytest.mark.skipif(not upstream.T5X_DIR, reason=(
    "XMTF_T5X_DIR is not set: point it at a google-research/t5x source tree (scripts/"
    "launch_tpu_pod.sh T5X_COMMIT) to run upstream t5x.eval and t5x.infer on gin/t5x/runs/"))
def test_upstream_t5x_eval_and_infer_match_our_engine(tmp_path):
  t5x_dir = Path(upstream.T5X_DIR).expanduser().resolve()
  assert (t5x_dir / "t5x" / "eval.py").is_file(), f"no t5x/eval.py in {t5x_dir}"
  base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  extra = os.environ.get("PYTHONPATH", "")
  shims = upstream._needed_shims(dict(base, PYTHONPATH=extra) if extra else base)
  path = ":".join(p for p in (str(t5x_dir), str(REPO), shims, extra) if p)
  env = dict(base, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  model_dir = tmp_path / "model"
  train = subprocess.run(upstream.train_command(str(t5x_dir), str(model_dir)), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1200)
  assert train.returncode == 0, (train.stdout + train.stderr)[-4000:]
  ckpt = model_dir / f"checkpoint_{upstream.STEPS}"

  # 1. the eval job under T5X: scripts/eval.sh --engine t5x (t5x.eval, then the report)
  t5x_out = tmp_path / "t5x_eval"
  data = [f"--gin.tasks.heldout.data_config.data_dir='{BUNDLED}'",
          "--gin.tasks.heldout.data_config.max_examples=8"]
  run = subprocess.run(
      ["bash", str(EVAL_SH), "--engine", "t5x", "mt5_small", str(ckpt), str(t5x_out),
       "heldout_bundled", "--", *TINY_T5X, *data], cwd=REPO,
      env=dict(base, T5X_DIR=str(t5x_dir), PYTHONPATH=extra, JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=1800)
  log = run.stdout + run.stderr
  (tmp_path / "t5x_eval.log").write_text(log)
  assert run.returncode == 0, log[-6000:]
  assert log.count(f"/accuracy at step {upstream.STEPS}:") == 20, log[-3000:]
  assert "has no metrics" not in log
  t5x_summary = json.loads((t5x_out / "results.json").read_text())
  assert t5x_summary["source"]["engine"] == "t5x"
  assert [c["num_prompts"] for c in t5x_summary["configs"]] == [5, 5, 5, 5]

  # 2. our engine on the same T5X checkpoint: the same accuracy per prompt
  ours_out = tmp_path / "xmtf_eval"
  ours = _run_printed(
      ["mt5_tiny", str(ckpt), str(ours_out), "heldout_bundled", "--",
       f'--gin.tasks.vocab.mt5_vocabulary_config.path="{SAMPLE_SPM}"', f'--gin.DATA_DIR="{BUNDLED}"',
       "--gin.EVALUATOR_NUM_EXAMPLES=8", "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 64}",
       "--gin.BATCH_SIZE=8", "--gin.network.T5Config.emb_dim=32",
       "--gin.network.T5Config.num_heads=2", "--gin.network.T5Config.mlp_dim=64",
       '--gin.COMPUTE_DTYPE="bfloat16"', "--gin.WRITE_CHARTS=False"],
      dict(base, JAX_PLATFORMS="cpu"))
  assert ours.returncode == 0, (ours.stdout + ours.stderr)[-4000:]
  ours_summary = json.loads((ours_out / "results.json").read_text())

  def by_prompt(summary):
    return {(p["dataset"], p["config"], p["prompt"]): p["accuracy"] for p in summary["prompts"]}
  assert by_prompt(t5x_summary) == pytest.approx(by_prompt(ours_summary), abs=1e-9)

  # 3. the infer recipe: t5x.infer generates for the sample's validation split
  infer_out = tmp_path / "t5x_infer"
  infer = subprocess.run(
      [sys.executable, "-m", "t5x.infer", f"--gin_search_paths={t5x_dir},{REPO / 'gin'}",
       "--gin_file=t5x/examples/t5/mt5/small.gin", "--gin_file=t5x/runs/infer.gin",
       "--gin_bindings=from __gin__ import dynamic_registration",
       "--gin_bindings=from t5x import utils", "--gin_bindings=from tasks import vocab",
       f"--gin.CHECKPOINT_PATH='{ckpt}'", f"--gin.INFER_OUTPUT_DIR='{infer_out}'",
       "--gin.MIXTURE_OR_TASK_NAME='xp3_sample_en'", "--gin.VOCABULARY=@vocab.sample_vocabulary()",
       *[f for f in TINY_T5X if "heldout" not in f and "mt5_vocabulary" not in f],
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
  assert infer.returncode == 0, (infer.stdout + infer.stderr)[-4000:]
  lines = (infer_out / "xp3_sample_en-predict.jsonl-00000-of-00001").read_text().splitlines()
  assert lines and all("prediction" in json.loads(line) for line in lines)
