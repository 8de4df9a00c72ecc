"""Gin parsing with T5X's conventions and errors that name the file and the fix.

T5X users write ``--gin_file`` (repeatable, later overrides earlier),
``--gin_bindings`` and the ``--gin.NAME=VALUE`` shorthand; gin files use
``from __gin__ import dynamic_registration``. This module owns all of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.resources
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin


def _gin_dir() -> Path:
  """The gin files of the copy of this package that runs."""
  # A wheel carries the repository's gin/ as package data, xmtf_pipeline/gin_files (setup.cfg
  # package_dir). A source checkout (editable install, PYTHONPATH) has no such folder: its files
  # are the repository's gin/ beside the package. Importing xmtf_pipeline.gin_files instead would
  # find another checkout's gin/ where that one is installed editable and this one on PYTHONPATH.
  installed = Path(importlib.resources.files("xmtf_pipeline")) / "gin_files"
  if installed.is_dir():
    return installed.resolve()
  return Path(__file__).resolve().parent.parent / "gin"


GIN_DIR = _gin_dir()
MODELS_DIR = GIN_DIR / "models"
# A family's shared base (models/mt5_common.gin, mt0/mt0_xp3_common.gin) is included by the
# family's files, which state what it lacks (a size's dimensions, a recipe's steps): it is no
# model or recipe of its own, so it is not offered as one.
SHARED_BASE_SUFFIX = "_common"


class GinConfigError(ValueError):
  """A gin file or binding that cannot be used; the message says which and why."""


def rewrite_gin_args(args: Sequence[str]) -> list[str]:
  """Turns T5X's ``--gin.NAME=VALUE`` shorthand into ``--gin_bindings=NAME = VALUE``."""
  out = []
  for arg in args:
    if arg.startswith("--gin.") and not arg.startswith("--gin.help"):
      body = arg[len("--gin."):]
      if "=" not in body:
        raise GinConfigError(
            f"Flag {arg!r}: the --gin.NAME=VALUE shorthand needs '=', e.g. "
            "--gin.MODEL_DIR=\\\"/tmp/run\\\".")
      name, value = body.split("=", 1)
      out.append(f"--gin_bindings={name} = {value}")
    else:
      out.append(arg)
  return out


def _resolve(gin_file: str, search_paths: Sequence[str]) -> str:
  candidates = [Path(gin_file)] + [Path(p) / gin_file for p in search_paths]
  for c in candidates:
    if c.is_file():
      return str(c)
  raise GinConfigError(
      f"gin file {gin_file!r} not found (looked in: {', '.join(str(c) for c in candidates)}). "
      "Pass a path, or a name relative to --gin_search_paths.")


@contextlib.contextmanager
def _includes_from(paths: Sequence[str]):
  """Resolves ``include`` statements against ``paths`` (then the cwd) before gin's own readers.

  gin's last-resort reader takes an include's folder for a Python package on ``sys.path``:
  with the repository root there (pytest, ``python -m``, ``PYTHONPATH=$PWD`` for upstream
  T5X), a folder named ``runs/`` or ``models/`` in the cwd is a namespace package and
  ``include 'runs/finetune.gin'`` crashed inside gin. Our files never need that reader, so
  an include found on our search paths is parsed by absolute path and never reaches it.
  """
  original = gin.config.parse_config_file

  def parse_config_file(config_file, *args, **kwargs):
    if not os.path.isabs(config_file):
      for prefix in [*paths, ""]:
        candidate = os.path.join(prefix, config_file)
        if os.path.isfile(candidate):
          config_file = os.path.abspath(candidate)
          break
    return original(config_file, *args, **kwargs)

  gin.config.parse_config_file = parse_config_file
  try:
    yield
  finally:
    gin.config.parse_config_file = original


@contextlib.contextmanager
def _quiet_root_logger():
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    root.setLevel(level)


def parse(gin_files: Sequence[str] = (), bindings: Sequence[str] = (),
          search_paths: Sequence[str] = (), finalize: bool = True) -> None:
  """Clears gin and parses files then bindings (later overrides earlier).

  Our ``gin/`` folder (``GIN_DIR``) is always searched last, as T5X appends
  its own root. Errors from gin are re-raised naming the file or binding.
  """
  gin.clear_config(clear_constants=False)
  paths = [*search_paths, str(GIN_DIR)]
  for p in paths:
    gin.add_config_file_search_path(p)
  for f in gin_files:
    resolved = _resolve(f, paths)
    try:
      # gin logs each include path it tries before the search paths.
      with _quiet_root_logger(), _includes_from(paths):
        gin.parse_config_file(resolved)
    except Exception as e:  # gin raises several types; all are user errors here.
      raise GinConfigError(f"gin file {resolved}: {e}") from e
  for b in bindings:
    _import_named_modules(b)
    try:
      gin.parse_config(b)
    except Exception as e:
      hint = _quote_hint(b, e)
      # Python's literal parser names an AST node (``<ast.Name object at 0x…>``), not the text.
      text = re.sub(r"malformed node or string[^\n]*<ast\.\w+ object at 0x[0-9a-f]+>\n?\s*",
                    "", str(e)) if hint else str(e)
      raise GinConfigError(f"gin binding {b!r}: {text}{hint}") from e
  if finalize:
    gin.finalize()


# Our configurables named by module in a binding (``tasks.sources.skip_malformed_records.skip``,
# ``@tasks.mixtures.xp3_ablation()``): gin only knows them once their module is imported, which a
# gin file does with ``import``; a command-line binding has no such line, so it is imported here.
_OUR_DOTTED = re.compile(r"(?<![\w.])@?((?:tasks|xmtf_pipeline)(?:\.[A-Za-z_]\w*)+)")
_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'")


def _import_named_modules(binding: str) -> None:
  """Imports the longest importable module prefix of each of our dotted names in ``binding``."""
  for dotted in _OUR_DOTTED.findall(_STRING.sub('""', binding)):
    parts = dotted.split(".")
    for n in range(len(parts) - 1, 0, -1):
      try:
        importlib.import_module(".".join(parts[:n]))
        break
      except ModuleNotFoundError:
        continue


def _quote_hint(binding: str, error: Exception) -> str:
  """How to pass a string when gin could not parse an unquoted value such as ``/tmp/x``."""
  if not any(m in str(error) for m in ("Unable to parse value", "malformed node or string")) \
     or "=" not in binding:
    return ""
  name, value = (part.strip() for part in binding.split("=", 1))
  if not value or value[0] in "'\"@%[({" or value[0].isdigit():
    return ""
  return (f"\nA string value must be quoted: --gin.{name}=\\\"{value}\\\" on a shell command "
          f"line (or '--gin.{name}=\"{value}\"'), {name} = \"{value}\" in a gin file.")


@gin.configurable("xmtf_macro_value")
def _macro_value(value: Any = gin.REQUIRED) -> Any:
  return value


def evaluate(expression: str) -> Any:
  """Evaluates a gin expression such as ``%MODEL_CONFIG`` under the parsed config."""
  with gin.unlock_config():
    gin.parse_config(f"xmtf_macro_value.value = {expression}")
  try:
    return _macro_value()
  except Exception as e:
    raise GinConfigError(f"evaluating {expression}: {e}") from e


def macro_binding(name: str) -> str | None:
  """The text a parsed config binds macro ``name`` to (``%gin.REQUIRED`` included), or None."""
  values = gin.config._CONFIG.get((name, "gin.macro"))
  return None if values is None else str(values.get("value"))


def check_required_macros() -> None:
  """Fails before any work if a macro is still ``%gin.REQUIRED``, naming it and the fix.

  gin 0.5 passes such a value on silently when the parameter has no default,
  so the parsed bindings are checked here.
  """
  missing = sorted(scope for (scope, selector), values in gin.config._CONFIG.items()
                   if selector == "gin.macro" and str(values.get("value")) == "%gin.REQUIRED")
  if missing:
    hints = " ".join(f"--gin.{m}=..." for m in missing)
    raise GinConfigError(
        f"{', '.join(missing)} set to %gin.REQUIRED but not subsequently overridden; "
        f"set {'it' if len(missing) == 1 else 'them'} in a gin file or with {hints}.")


def _macro_references(value: Any, found: set[str]) -> None:
  if isinstance(value, gin.config.ConfigurableReference):
    if value.selector == "gin.macro":
      found.add("/".join(value.scopes))
  elif isinstance(value, dict):
    for v in value.values():
      _macro_references(v, found)
  elif isinstance(value, (list, tuple, set)):
    for v in value:
      _macro_references(v, found)


def check_unread_macros(read_by_code: Sequence[str] = ()) -> None:
  """Fails on a macro that nothing reads (a typo such as ``--gin.BATCH_SIZ=8``).

  gin accepts a binding of any macro name, so a misspelt macro would otherwise run
  silently with the default it meant to change. Macros are read through ``%NAME`` in a
  binding's value, or by the calling code (``read_by_code``).
  """
  defined = {scope for (scope, selector) in gin.config._CONFIG if selector == "gin.macro"}
  read = set(read_by_code)
  for values in gin.config._CONFIG.values():
    _macro_references(values, read)
  unread = sorted(defined - read)
  if unread:
    known = sorted(read | defined)
    hints = []
    for name in unread:
      close = difflib.get_close_matches(name, [k for k in known if k != name], n=1, cutoff=0.6)
      hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise GinConfigError(
        f"macro {', '.join(hints)} is set but no gin file or configurable reads it; fix the "
        "name in --gin.NAME=... or your gin file, or drop the binding.")


def check_macros(read_by_code: Sequence[str] = ()) -> None:
  """Every macro is set (no %gin.REQUIRED left) and read by something (no typo)."""
  check_required_macros()
  check_unread_macros(read_by_code)


def get_configurable(fn):
  """The gin-wrapped version of ``fn`` (registered by a gin file's dynamic import)."""
  try:
    return gin.get_configurable(fn)
  except ValueError as e:
    raise GinConfigError(
        f"{fn.__module__}.{fn.__qualname__} is not configured by any gin file; pass a run config "
        "such as --gin_file=runs/finetune.gin.") from e


def model_names() -> list[str]:
  return sorted(p.stem for p in MODELS_DIR.glob("*.gin")
                if not p.stem.endswith(SHARED_BASE_SUFFIX))


def model_gin_file(name_or_path: str) -> str:
  """A model name (``mt5_large``) or a gin file path -> the gin file."""
  if name_or_path.endswith(".gin"):
    if not Path(name_or_path).is_file() and not (GIN_DIR / name_or_path).is_file():
      raise GinConfigError(f"Model gin file {name_or_path!r} does not exist.")
    return name_or_path
  path = MODELS_DIR / f"{name_or_path}.gin"
  if name_or_path not in model_names():
    raise GinConfigError(
        f"Unknown model {name_or_path!r}. Choose one of: {', '.join(model_names())} "
        f"(files in {MODELS_DIR}), or pass a .gin file path.")
  return str(path)


def load_model_config(name_or_path: str, bindings: Sequence[str] = ()):
  """The ``network.T5Config`` a model gin file defines (as a plain frozen dataclass).

  ``DROPOUT_RATE`` defaults to 0.0 here; pass bindings to override anything.
  """
  from xmtf_pipeline import network  # noqa: F401  (registers on first use)

  parse([model_gin_file(name_or_path)], ["DROPOUT_RATE = 0.0", *bindings], finalize=False)
  cfg = evaluate("%MODEL_CONFIG")
  gin.clear_config(clear_constants=False)
  # Gin hands back an instance of its wrapper subclass; normalise to the plain class.
  return network.T5Config(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})


def operative_statements(text: str) -> dict[str, str]:
  """Operative config text (``MODEL_DIR/config.gin``) -> {binding or import: value as written}.

  Plain text, not gin: reading a run's settings must not need every configurable
  module imported. A value spanning lines (gin wraps long dicts) is one statement.
  """
  out: dict[str, str] = {}
  statement: list[str] = []
  depth = 0
  for line in text.splitlines():
    stripped = line.split("#", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
    if not statement and not stripped:
      continue
    statement.append(stripped.strip())
    depth += sum(stripped.count(c) for c in "([{") - sum(stripped.count(c) for c in ")]}")
    if depth > 0 or stripped.endswith("\\"):
      continue
    joined = " ".join(s.rstrip("\\").strip() for s in statement if s)
    statement, depth = [], 0
    if joined.startswith(("import ", "from ")):
      out[joined] = ""
    elif "=" in joined:
      key, value = (s.strip() for s in joined.split("=", 1))
      out[key] = value
  return out
