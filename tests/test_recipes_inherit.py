"""Every gin file under gin/ resolves to the config recorded in tests/data/recipe_configs/.

The recipes of a family include one shared base and state only what differs per size (issue 27);
these golden files were written before that refactor, so the test shows that each recipe's config
is the one it had, and that no later edit changes a recipe unnoticed. Two canonical forms:

* gin/models, gin/mt0, gin/runs: parsed as `xmtf` parses them (gin_config.parse, no bindings),
  then gin's own tables rendered: every import, every macro and every bound parameter of every
  configurable (not only those a run calls, as operative_config_str would), sorted, one a line.
* gin/t5x: these include upstream T5X files and import t5x modules, both absent here, so gin
  cannot parse them. They are read with gin's parser statement by statement (nothing looked up):
  includes of our own files expanded in place, aliases resolved to their module (per file, as gin
  scopes imports), the last binding of each name kept, upstream includes kept as markers. Each
  binding is listed under the upstream include it follows: that file's bindings override what
  came before it, so the same values after the same includes resolve the same under any T5X.

After a deliberate change, rewrite the golden files and review the diff:
  PYTHONPATH=$PWD .venv/bin/python tests/test_recipes_inherit.py
"""

import pprint
import sys
from pathlib import Path
from typing import Any

import pytest
from test_t5x_gin import Macro, Ref, _statements

import gin
from gin import config_parser
from xmtf_pipeline import gin_config

REPO = Path(__file__).resolve().parent.parent
GIN_DIR = REPO / "gin"
GOLDEN = REPO / "tests" / "data" / "recipe_configs"

# Every gin file that is a model, a run or a recipe. A new one must be added here (with its golden
# file), so none goes unchecked; test_the_list_covers_every_gin_file says which is missing.
RECIPES = (
    "models/mt5_base.gin",
    "models/mt5_large.gin",
    "models/mt5_small.gin",
    "models/mt5_tiny.gin",
    "models/mt5_xl.gin",
    "models/mt5_xxl.gin",
    "mt0/mt0_base_xp3.gin",
    "mt0/mt0_large_xp3.gin",
    "mt0/mt0_large_xp3_packed.gin",
    "mt0/mt0_small_xp3.gin",
    "mt0/mt0_xl_xp3.gin",
    "mt0/mt0_xl_xp3_1gpu.gin",
    "mt0/mt0_xxl_xp3.gin",
    "mt0/mt0_xxl_xp3_1gpu.gin",
    "runs/eval.gin",
    "runs/finetune.gin",
    "runs/infer.gin",
    "runs/pretrain.gin",
    "t5x/mt0_base_xp3.gin",
    "t5x/mt0_large_xp3.gin",
    "t5x/mt0_small_xp3.gin",
    "t5x/mt0_xl_xp3.gin",
    "t5x/mt0_xxl_xp3.gin",
    "t5x/mt5_base_mc4_pretrain.gin",
    "t5x/runs/eval_heldout.gin",
    "t5x/runs/infer.gin",
)
# A family's shared base (*_common.gin) is no model, run or recipe of its own (it lacks the sizes,
# or the per-size values): it is checked through every file that includes it.
SHARED_SUFFIX = gin_config.SHARED_BASE_SUFFIX + ".gin"


def _golden_path(gin_file: str) -> Path:
  return GOLDEN / f"{gin_file}.txt"


def _all_gin_files() -> list[str]:
  return sorted(p.relative_to(GIN_DIR).as_posix() for p in GIN_DIR.rglob("*.gin"))


# ----------------------------------------------------------------- parsed by gin (our engine)


def _gin_canonical(gin_file: str) -> str:
  gin_config.parse([gin_file], finalize=False)
  imports = sorted({s.format() for s in gin.config._IMPORTS})
  macros, params = [], []
  for (scope, selector), values in gin.config._CONFIG.items():
    for name, value in values.items():
      text = pprint.pformat(value, width=10**6, sort_dicts=True)
      if selector == "gin.macro":
        macros.append(f"{scope} = {text}")
      else:
        params.append(f"{scope + '/' if scope else ''}{selector}.{name} = {text}")
  gin.clear_config(clear_constants=False)
  return "\n".join([
      f"# {gin_file} parsed by gin_config.parse (no bindings): imports, macros, parameters.",
      *imports, "", "# Macros:", *sorted(macros), "", "# Parameters:", *sorted(params), ""])


# ----------------------------------------------------------------- read statement by statement


def _own_include(filename: str) -> Path | None:
  """Our file an include names, resolved as upstream T5X does with $XMTF_DIR/gin on
  --gin_search_paths; None for an upstream file (absent here)."""
  path = GIN_DIR / filename
  return path if path.is_file() else None


def _resolve(name: str, aliases: dict[str, str]) -> str:
  """'partitioning.PjitPartitioner' -> 't5x.partitioning.PjitPartitioner' (scope kept)."""
  scope, _, selector = name.rpartition("/")
  head, dot, rest = selector.partition(".")
  if head in aliases:
    selector = aliases[head] + dot + rest
  return f"{scope}/{selector}" if scope else selector


def _fmt(value: Any, aliases: dict[str, str]) -> str:
  if isinstance(value, Ref):
    return "@" + _resolve(value.name, aliases) + ("()" if value.evaluate else "")
  if isinstance(value, Macro):
    return "%" + value.name
  if isinstance(value, dict):
    items = sorted((_fmt(k, aliases), _fmt(v, aliases)) for k, v in value.items())
    return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
  if isinstance(value, list):
    return "[" + ", ".join(_fmt(v, aliases) for v in value) + "]"
  if isinstance(value, tuple):
    inner = [_fmt(v, aliases) for v in value]
    return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"
  return repr(value)


def _walk(path: Path, state: dict) -> None:
  """Adds one file's statements to ``state`` in gin's order, expanding our own includes."""
  aliases = {}  # gin scopes imports to the file that states them
  for stmt in _statements(path):
    if isinstance(stmt, config_parser.ImportStatement):
      state["imports"].add(stmt.module)
      if stmt.is_from or stmt.alias:
        aliases[stmt.bound_name()] = stmt.module
    elif isinstance(stmt, config_parser.IncludeStatement):
      own = _own_include(stmt.filename)
      if own is not None:
        _walk(own, state)
      else:
        state["upstream"].append(stmt.filename)
    elif isinstance(stmt, config_parser.BindingStatement):
      if stmt.arg_name == "" and "." not in stmt.selector:
        key = f"{stmt.scope}/{stmt.selector}" if stmt.scope else stmt.selector
      else:
        key = _resolve(f"{stmt.scope}/{stmt.selector}" if stmt.scope else stmt.selector,
                       aliases) + "." + stmt.arg_name
      state["bindings"].pop(key, None)  # the last binding wins, in its place
      state["bindings"][key] = (len(state["upstream"]), _fmt(stmt.value, aliases))


def _text_canonical(gin_file: str) -> str:
  state = {"imports": set(), "upstream": [], "bindings": {}}
  _walk(GIN_DIR / gin_file, state)
  lines = [f"# {gin_file} read statement by statement (upstream T5X includes absent here): "
           "imports, upstream includes in order, each binding's last value under the upstream "
           "include it follows.", *(f"import {m}" for m in sorted(state["imports"])), ""]
  for segment in range(len(state["upstream"]) + 1):
    if segment:
      lines.append(f"# After upstream include {segment}: {state['upstream'][segment - 1]}")
    else:
      lines.append("# Before any upstream include:")
    lines += sorted(f"{key} = {value}" for key, (seg, value) in state["bindings"].items()
                    if seg == segment)
  return "\n".join([*lines, ""])


def canonical(gin_file: str) -> str:
  return _text_canonical(gin_file) if gin_file.startswith("t5x/") else _gin_canonical(gin_file)


# ----------------------------------------------------------------- tests


def _includes(gin_file: str) -> set[str]:
  """Our files ``gin_file`` includes, directly or through another of ours."""
  found, todo = set(), [gin_file]
  while todo:
    for stmt in _statements(GIN_DIR / todo.pop()):
      if isinstance(stmt, config_parser.IncludeStatement) and _own_include(stmt.filename):
        if stmt.filename not in found:
          found.add(stmt.filename)
          todo.append(stmt.filename)
  return found


def test_the_list_covers_every_gin_file():
  assert list(RECIPES) == sorted(set(RECIPES)), "keep RECIPES sorted, without repeats"
  shared = {f for f in _all_gin_files() if f.endswith(SHARED_SUFFIX)}
  unlisted = set(_all_gin_files()) - set(RECIPES) - shared
  assert not unlisted, f"add to RECIPES (and write its golden file): {sorted(unlisted)}"
  assert not set(RECIPES) - set(_all_gin_files()), "RECIPES names a file that is gone"
  goldens = sorted(p.relative_to(GOLDEN).as_posix()[:-len(".txt")] for p in GOLDEN.rglob("*.txt"))
  assert goldens == list(RECIPES), "one golden file per recipe, none left over"
  for base in shared:  # a base no recipe includes would be checked by nothing
    assert any(base in _includes(r) for r in RECIPES), f"{base} is included by no recipe"


@pytest.mark.parametrize("gin_file", RECIPES)
def test_resolved_config_is_unchanged(gin_file):
  expected = _golden_path(gin_file).read_text()
  got = canonical(gin_file)
  assert got == expected, (
      f"gin/{gin_file} now resolves differently from {_golden_path(gin_file).relative_to(REPO)}; "
      "if that is meant, rewrite it (module docstring) and review the diff")


def test_text_form_sees_an_override_and_its_place(tmp_path, monkeypatch):
  """The statement form keeps the last value and where it sits relative to upstream includes,
  so moving a binding above an upstream include (which would then override it) is a change."""
  monkeypatch.setattr(sys.modules[__name__], "GIN_DIR", tmp_path)
  (tmp_path / "t5x").mkdir()
  (tmp_path / "t5x" / "a_common.gin").write_text(
      "from __gin__ import dynamic_registration\nfrom t5x import utils\n"
      "include 'upstream/run.gin'\nX = 1\nutils.C.p = {'b': 2, 'a': (1,)}\n")
  (tmp_path / "t5x" / "a.gin").write_text("include 't5x/a_common.gin'\nX = 2\n")
  (tmp_path / "t5x" / "b.gin").write_text("X = 2\ninclude 't5x/a_common.gin'\nX = 1\n")
  a, b = _text_canonical("t5x/a.gin"), _text_canonical("t5x/b.gin")
  assert "X = 2" in a and "t5x.utils.C.p = {'a': (1,), 'b': 2}" in a
  assert a != b and "X = 1" in b


if __name__ == "__main__":
  for name in RECIPES:
    _golden_path(name).parent.mkdir(parents=True, exist_ok=True)
    _golden_path(name).write_text(canonical(name))
    print("wrote", _golden_path(name).relative_to(REPO))
