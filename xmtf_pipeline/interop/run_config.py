"""What a run says about itself: ``MODEL_DIR/config.gin`` read without gin, and what follows from it.

The architecture it trained (``model_config_from_run``, else ``infer_config`` from parameter
shapes) and its SentencePiece model (``resolve_spm``), for ``xmtf export-hf``, ``xmtf eval``,
``xmtf infer`` and ``xmtf select-checkpoint`` (through restore's "what a checkpoint brings").
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from xmtf_pipeline import gin_config
from xmtf_pipeline.network import T5Config

_T5CONFIG_KEY = re.compile(r"(?:(?P<scope>[\w/]+)/)?network\.T5Config\.(?P<field>\w+)")


class RunConfigError(ValueError):
  """A run whose config.gin (or folder) does not say what is needed; the message says what to pass."""


IMPORTS = "import"  # parse_operative_config's key for the modules config.gin imports


def parse_operative_config(text: str) -> dict[str, Any]:
  """``MODEL_DIR/config.gin`` (gin's operative config) -> {binding: value}, macros resolved,
  and under ``IMPORTS`` the modules its import lines name (``import tasks.xp3``,
  ``from tasks import xp3`` -> ``tasks.xp3``), in order.

  gin_config's text reader, not gin itself: gin would need every configurable
  module (the trainer, TensorFlow under seqio) imported just to read numbers.
  """
  statements = gin_config.operative_statements(text)
  raw = {k: v for k, v in statements.items() if not k.startswith(("import ", "from "))}
  modules = []
  for statement in statements:
    m = re.fullmatch(r"import ([\w.]+)(?: as \w+)?|from ([\w.]+) import (\w+)(?: as \w+)?",
                     statement)
    if m:
      modules.append(m[1] or f"{m[2]}.{m[3]}")

  def value_of(text: str, depth: int = 0) -> Any:
    if text.startswith("%") and depth < 20:
      name = text[1:]
      return value_of(raw[name], depth + 1) if name in raw else text
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text

  return {**{k: value_of(v) for k, v in raw.items()}, IMPORTS: modules}


def read_run_config(model_dir: str) -> dict[str, Any]:
  """``parse_operative_config`` of ``MODEL_DIR/config.gin``; {} when the run has none."""
  path = os.path.join(model_dir, "config.gin")
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return parse_operative_config(f.read())


def model_config_from_run(run: Mapping[str, Any]) -> T5Config | None:
  """The T5Config the run trained (``MODEL_CONFIG/network.T5Config.*`` bindings)."""
  scoped: dict[str, dict[str, Any]] = {}
  for key, value in run.items():
    m = _T5CONFIG_KEY.fullmatch(key)
    if m:
      scoped.setdefault(m["scope"] or "", {})[m["field"]] = value
  fields = scoped.get("MODEL_CONFIG") or next(iter(scoped.values()), None)
  if not fields:
    return None
  known = set(T5Config.__dataclass_fields__)
  try:
    return T5Config(**{k: v for k, v in fields.items() if k in known})
  except (TypeError, ValueError) as e:
    raise RunConfigError(f"The run's config.gin has an unusable network.T5Config: {e}") from e


def infer_config(shapes: Mapping[str, tuple[int, ...]]) -> T5Config:
  """An architecture from parameter shapes alone (relpos distance and eps: mT5's)."""
  try:
    vocab, emb = shapes["token_embedder/embedding"]
    heads, buckets = shapes["encoder/relpos_bias/rel_embedding"]
    joined = shapes["encoder/layers_0/attention/query/kernel"][1]
    mlp = shapes["encoder/layers_0/mlp/wi_0/kernel"][1]
  except (KeyError, ValueError) as e:
    raise RunConfigError(f"Cannot infer the architecture from the checkpoint (no {e}); pass "
                        "--model with the run's model gin.") from None

  def layers(stack: str) -> int:
    return len({m[1] for p in shapes if (m := re.match(rf"{stack}/layers_(\d+)/", p))})

  return T5Config(vocab_size=vocab, emb_dim=emb, num_heads=heads, head_dim=joined // heads,
                  mlp_dim=mlp, num_encoder_layers=layers("encoder"),
                  num_decoder_layers=layers("decoder"), relpos_num_buckets=buckets,
                  dtype="float32")


def resolve_spm(spm_model: str | None, run: Mapping[str, Any], model_dir: str
                ) -> tuple[str, int | None, str]:
  """(SentencePiece model path, extra ids if known, where it came from)."""
  if spm_model:
    return spm_model, None, "--spm_model"
  for key, value in run.items():
    if key.endswith("mt5_vocabulary_config.path") and isinstance(value, str):
      extra = next((v for k, v in run.items() if k.endswith("mt5_vocabulary_config.extra_ids")),
                   None)
      return value, extra, f"{key} in config.gin"
  local = os.path.join(model_dir, "spiece.model")
  if os.path.isfile(local):  # import-hf keeps it there, with the extra ids the folder declared
    from tasks import vocab as vocab_lib
    return local, vocab_lib.declared_extra_ids(model_dir), f"{local}"
  task = run.get("MIXTURE_OR_TASK_NAME")
  if isinstance(task, str):
    try:
      path, extra = _task_vocabulary(task, _task_modules(run))
      return path, extra, f"the vocabulary of task {task!r}"
    except RunConfigError as e:
      raise RunConfigError(f"Cannot find the run's SentencePiece model: {e}") from None
    except Exception as e:  # missing files, ...
      raise RunConfigError(f"Cannot find the run's SentencePiece model via task {task!r} "
                          f"({type(e).__name__}: {e}); pass --spm_model PATH.") from e
  raise RunConfigError("Cannot find the run's SentencePiece model (no config.gin naming a task "
                      "or vocabulary, no spiece.model in MODEL_DIR); pass --spm_model PATH.")


# Modules a run's config.gin imports that cannot hold its tasks (and must not run here).
_NOT_TASK_MODULES = ("__gin__", "__main__", "gin", "t5x", "xmtf_pipeline", "seqio", "jax", "flax",
                     "optax", "tensorflow")


def _task_modules(run: Mapping[str, Any]) -> list[str]:
  """Where the run's task is registered: MIXTURE_OR_TASK_MODULE, else config.gin's imports (runs
  of ``xmtf train`` and of upstream T5X import e.g. ``tasks.xp3`` there), else ``tasks``."""
  module = run.get("MIXTURE_OR_TASK_MODULE")
  if isinstance(module, str) and module:
    return [module]
  imported = [m for m in run.get(IMPORTS, ()) if m.split(".")[0] not in _NOT_TASK_MODULES]
  return imported or ["tasks"]


def _task_vocabulary(task: str, modules: Sequence[str]) -> tuple[str, int]:
  """The targets vocabulary of a registered SeqIO task (imports TensorFlow: last resort)."""
  import importlib

  import seqio

  failed = []
  for module in modules:
    try:
      importlib.import_module(module)
    except ImportError as e:
      failed.append(f"{module} ({e})")
  if task not in seqio.TaskRegistry.names() and task not in seqio.MixtureRegistry.names():
    tried = ", ".join(modules) + (f"; could not import {', '.join(failed)}" if failed else "")
    raise RunConfigError(f"task {task!r} is not registered by the run's task modules ({tried}); "
                        "pass --spm_model PATH, or put the module holding the task on PYTHONPATH.")
  vocab = seqio.get_mixture_or_task(task).output_features["targets"].vocabulary
  from tasks import vocab as vocab_lib
  if isinstance(vocab, vocab_lib.LazySentencePieceVocabulary):
    return vocab_lib.mt5_vocabulary_config()  # resolved without reading the file
  return vocab.sentencepiece_model_file, vocab.extra_ids
