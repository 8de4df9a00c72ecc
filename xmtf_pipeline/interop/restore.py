"""Any checkpoint, whatever wrote it: what it holds, and its arrays restored where a job wants them.

Above the format readers: ours (orbax, checkpoints), T5X's (t5x_import, legacy msgpack +
TensorStore or orbax, local or gs://) and Hugging Face's (hf_import).
``restore_state`` gives training its initial state (INITIAL_CHECKPOINT_PATH), ``restore_params``
gives eval, infer and select-checkpoint the parameters, each array straight into its planned
sharding. ``damaged`` and ``nonfinite_error`` turn an unreadable or diverged checkpoint into one
line that names the array and the checkpoint to use instead. The last section says what a
checkpoint brings with it (its model config and vocabulary), for ``xmtf eval`` and ``xmtf infer``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from xmtf_pipeline import checkpoints
from xmtf_pipeline import params as params_lib
from xmtf_pipeline.interop import hf_import, run_config, t5x_import
from xmtf_pipeline.network import T5Config

_ARRAY_IN_ERROR = re.compile(r'(?:Error reading|Error opening|reading) "([^"/]+)(?:/[^"]*)?"')


def damaged(path: str, error: BaseException, array: str | None = None) -> checkpoints.CheckpointError:
  """One line for a checkpoint whose arrays cannot be read: which array, and what to use instead.

  ``array`` when known; else taken from TensorStore's message, else found by
  reading the arrays one by one until one fails.
  """
  path = os.path.abspath(path)
  if array is None:
    m = _ARRAY_IN_ERROR.search(str(error))
    array = m[1].replace(".", "/") if m else _first_unreadable_array(path)
  what = f"array {array} cannot be read" if array else "its arrays cannot be read"
  reason = checkpoints.first_line(error)
  reason = reason if len(reason) <= 160 else reason[:157] + "..."
  previous = checkpoints.previous_checkpoint(path)
  advice = (f"use the previous checkpoint {previous}" if previous else
            "no earlier checkpoint is beside it; restore it from a copy")
  return checkpoints.CheckpointError(f"Checkpoint {path} is damaged or incomplete: {what} ({reason}); "
                         f"{advice}.")


def _first_unreadable_array(path: str) -> str | None:
  try:
    reader = t5x_import.open_checkpoint(path)
  except Exception as e:
    m = re.search(r"array (\S+) cannot be opened", str(e))
    return m[1] if m else None
  for name in reader.entries:
    try:
      reader.read(name)
    except Exception:
      return name
  return None


def first_nonfinite_array(reader: t5x_import.CheckpointReader, prefixes=("target", "state")
                          ) -> str | None:
  """The first array (parameters first, then optimizer state) holding NaN or Inf; or None.

  Reads one array at a time, so host memory holds one array, never the checkpoint.
  """
  names = [n for p in prefixes for n in sorted(reader.entries) if n.startswith(p + "/")]
  for name in names:
    value = np.asarray(reader.read(name))
    if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
      return name
  return None


def last_finite_checkpoint(step_dir: str) -> str | None:
  """The newest ``checkpoint_<n>`` beside ``step_dir`` older than it whose arrays are all finite
  (and readable); None when there is none. Error paths only: it reads each candidate whole."""
  previous = checkpoints.previous_checkpoint(step_dir)
  while previous is not None:
    try:
      if first_nonfinite_array(t5x_import.open_checkpoint(previous)) is None:
        return previous
    except Exception:  # unreadable: not a checkpoint to point a user at
      pass
    previous = checkpoints.previous_checkpoint(previous)
  return None


def nonfinite_error(step_dir: str, array: str, verb: str = "use") -> checkpoints.CheckpointError:
  """One line for a checkpoint holding NaN/Inf: the first bad array and the last finite checkpoint.

  ``verb`` says what to do with that checkpoint ("use" for eval/export, "restart from" ...).
  """
  step_dir = os.path.abspath(step_dir)
  good = last_finite_checkpoint(step_dir)
  advice = (f"{verb} the last finite checkpoint {good}" if good else
            "no earlier finite checkpoint is beside it")
  return checkpoints.CheckpointError(
      f"Checkpoint {step_dir} holds NaN/Inf values (first in {array}): the run diverged before "
      f"it was saved; {advice}.")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A checkpoint path with its format decided, once, by ``detect``.

  ``path`` is the folder the arrays are read from: the HF folder, or the ``checkpoint_<step>``
  a ``MODEL_DIR`` stands for (its newest); ``flag`` names the setting it came from in messages.
  """
  given: str
  format: str  # "hf", "ours", "t5x-legacy" or "t5x-orbax"
  path: str
  flag: str = "CHECKPOINT_PATH"

  @property
  def source(self) -> str:
    return f"{self.flag} {self.given}"


def detect(path: str, flag: str = "CHECKPOINT_PATH") -> Checkpoint:
  """The format of ``path``: an HF MT5 folder, our checkpoint (orbax, written by
  checkpoints.Checkpointer), or a native T5X one (legacy msgpack + TensorStore, or T5X's orbax;
  local or gs://). Accepts ``MODEL_DIR`` (its newest ``checkpoint_<step>``) or the step folder."""
  if "://" not in path:
    path = os.path.abspath(path)
    if not os.path.exists(path):
      raise checkpoints.CheckpointError(f"{flag} {path} does not exist.")
    if hf_import.is_hf_dir(path):
      return Checkpoint(path, "hf", path, flag)
  try:
    layout, location = t5x_import.detect_layout(path)
  except checkpoints.CheckpointError:
    if "://" in path:
      raise
    raise checkpoints.CheckpointError(
        f"{flag} {path} holds no checkpoint_<step> folder (nor a Hugging Face config.json); "
        "point it at a checkpoint directory such as MODEL_DIR/checkpoint_1000.") from None
  if layout == "orbax" and not location.is_gcs and t5x_import.is_own_orbax_checkpoint(
      location.path):
    return Checkpoint(path, "ours", location.path, flag)
  return Checkpoint(path, "t5x-legacy" if layout == "t5x-legacy" else "t5x-orbax",
                    location.path, flag)


def open_reader(path: str | Checkpoint) -> t5x_import.CheckpointReader:
  """Array-at-a-time reading of our or a T5X checkpoint on the host (export-hf streams it: the
  model is never whole in memory); an array that cannot be opened is ``damaged``'s one line."""
  ckpt = path if isinstance(path, Checkpoint) else detect(path, "checkpoint")
  if ckpt.format == "hf":
    raise checkpoints.CheckpointError(
        f"{ckpt.path} is already a Hugging Face folder; point at a T5X-format checkpoint "
        "(MODEL_DIR/checkpoint_<step>).")
  try:
    return t5x_import.open_checkpoint(ckpt.path)
  except t5x_import.T5XCheckpointError as e:
    array = re.search(r"array (\S+) cannot be opened", str(e))
    if not array:
      raise
    raise damaged(ckpt.path, e.__cause__ or e, array[1]) from None


def restore_state(path: str | Checkpoint, config: T5Config, target: Any,
                  params_only: bool = False) -> Any:
  """The full train state (params, Adafactor state, step) of any checkpoint, into ``target``'s
  shardings (a ShapeDtypeStruct or jax.Array tree; each array is read where it lives).

  ``path`` is a string (INITIAL_CHECKPOINT_PATH) or what ``detect`` made of one. Besides our own
  checkpoints: a Hugging Face MT5 directory (safetensors or pytorch_model.bin, single or sharded;
  Adafactor then starts from zero accumulators at step 0, since HF weights carry no optimizer
  state), and native T5X checkpoints, legacy msgpack + TensorStore or orbax, local or gs://
  (their params, Adafactor state and step, as T5X's own restore).
  The parameter tree is checked against the model config first, so a checkpoint
  of another size fails naming the first mismatching parameter and both shapes.
  ``params_only`` (evaluation, inference, selection): the parameters and the step
  only, whatever optimizer configuration wrote the checkpoint (T5X's factoring settings,
  momentum); neither ours nor T5X's optimizer slots are read.
  """
  ckpt = path if isinstance(path, Checkpoint) else detect(path, "INITIAL_CHECKPOINT_PATH")
  if ckpt.format == "hf":
    return hf_import.restore_state(ckpt.path, config, target, ckpt.source, params_only)
  if ckpt.format != "ours":
    return t5x_import.restore_state(ckpt.path, config, target, params_only, ckpt.source)
  step_dir = ckpt.path
  directory, step = os.path.dirname(step_dir), int(step_dir.rsplit("_", 1)[1])
  mngr = checkpoints.manager(directory, create=False)
  try:
    meta = mngr.item_metadata(step)["state"]
  except Exception as e:
    previous = checkpoints.previous_checkpoint(step_dir)
    raise checkpoints.CheckpointError(
        f"{step_dir} is not a readable checkpoint ({type(e).__name__}: "
        f"{checkpoints.first_line(e)})"
        + (f"; use the previous checkpoint {previous}." if previous else ".")) from None
  tree = getattr(meta, "tree", meta)
  if not isinstance(tree, dict) or "target" not in tree:
    raise checkpoints.CheckpointError(f"{step_dir} has no 'target' parameters.")
  shapes = jax.tree_util.tree_map(lambda m: _Shaped(tuple(m.shape)), dict(tree["target"]))
  params_lib.check_params(shapes, config, source=ckpt.source)
  saved_state = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype),
                                       dict(tree["state"]), is_leaf=lambda m: hasattr(m, "shape"))
  if not params_only:
    _check_optimizer_state(saved_state, target["state"], ckpt)
  try:
    if params_only:
      return _restore_params_and_step(step_dir, target["target"], saved_state)
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  except Exception as e:  # the metadata read, an array did not: truncated or damaged files
    raise damaged(step_dir, e) from None
  return restored["state"]


def _restore_params_and_step(step_dir: str, params_target: Any, saved_state: Any) -> dict:
  """``{'target': params, 'state': {'step'}}`` of our checkpoint, nothing else read: the
  optimizer slots stay on disk (a momentum slot is as big as the model), the parameters land in
  ``params_target``'s shardings and the step is replicated on their mesh (every process of a
  multi-process job reads it)."""
  leaf = jax.tree_util.tree_leaves(params_target)[0]
  sharding = getattr(leaf, "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  step = saved_state["step"]
  item = {"target": params_target,
          "state": {"step": jax.ShapeDtypeStruct(step.shape, step.dtype, sharding=sharding)}}
  one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # no target sharding
  restore_args = jax.tree_util.tree_map(
      lambda x: ocp.ArrayRestoreArgs(sharding=getattr(x, "sharding", None) or one_device,
                                     global_shape=x.shape, dtype=x.dtype), item)
  return ocp.PyTreeCheckpointer().restore(
      os.path.join(step_dir, "state"),
      args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))


def _check_optimizer_state(saved: Any, want: Any, ckpt: Checkpoint) -> None:
  saved, want = params_lib.flatten(saved), params_lib.flatten(want)
  for name, like in want.items():
    got = saved.get(name)
    if got is None or tuple(got.shape) != tuple(like.shape):
      raise checkpoints.CheckpointError(
          f"{ckpt.flag} {ckpt.path}: state/{name} has shape "
          f"{None if got is None else tuple(got.shape)} but the optimizer expects "
          f"{tuple(like.shape)}; the checkpoint was written with another Adafactor "
          "configuration (factored, min_dim_size_to_factor, beta1): use the same one.")


@dataclasses.dataclass
class _Shaped:
  shape: tuple[int, ...]


# --------------------------------------------------------------------------- parameters for eval, infer, selection


def restore_params(checkpoint_path: str, config: T5Config, partitioner: Any = None) -> Any:
  """Parameters of a checkpoint, checked against ``config`` before any data is read.

  Accepts an HF MT5 folder, our ``MODEL_DIR`` (newest) or ``MODEL_DIR/checkpoint_N``,
  and native T5X checkpoints (through restore_state). A checkpoint of
  another size or vocabulary fails naming the first mismatching parameter. Files hold
  per-layer parameters; a scanned ``config`` gets them stacked. With a ``partitioner``
  each array is restored straight into its sharding on the partitioner's mesh (a
  model-parallel weight is never whole on one device).
  """
  from xmtf_pipeline import layer_stacking

  disk = config.replace(scan_layers=False)
  params = _load_per_layer_params(checkpoint_path, disk, partitioner)
  if not config.scan_layers:
    return params
  if partitioner is None:
    return layer_stacking.stack(params, disk)
  shardings = partitioner.param_shardings(params_lib.abstract_variables(config)["params"])
  return partitioner.partition(lambda p: layer_stacking.stack(p, disk),
                               partitioner.param_shardings(
                                   params_lib.abstract_variables(disk)["params"]),
                               shardings)(params)


def _load_per_layer_params(checkpoint_path: str, config: T5Config, partitioner: Any) -> Any:
  from xmtf_pipeline.adafactor import Adafactor
  from xmtf_pipeline.trainer import TrainState

  ckpt = detect(checkpoint_path, "CHECKPOINT_PATH")
  if partitioner is None:
    abstract = jax.eval_shape(lambda: TrainState.create(
        params_lib.init_params(config, jax.random.PRNGKey(0)), Adafactor()).state_dict())
  else:  # sharded ShapeDtypeStructs: orbax and TensorStore read each shard where it lives
    from xmtf_pipeline import trainer
    abstract = trainer.abstract_state(config, Adafactor(), partitioner)
  state = restore_state(ckpt, config, abstract, params_only=True)
  params = state["target"]
  if partitioner is None:
    params = jax.tree_util.tree_map(jnp.asarray, params)
  bad = first_nonfinite_param(params)
  if bad is not None:
    raise _nonfinite_checkpoint_error(ckpt, bad)
  if ckpt.format != "hf":
    step = int(jax.device_get(state["state"]["step"]))
    print(f"Loaded the parameters of {checkpoint_path} (train step {step}).", flush=True)
  return params


def first_nonfinite_param(params: Any) -> str | None:
  """The first parameter (by name) holding NaN or Inf, or None (one bool per array is fetched)."""
  from xmtf_pipeline import trainer
  return next(iter(trainer.nonfinite_leaves(params)), None)


def _nonfinite_checkpoint_error(ckpt: Checkpoint, param: str) -> Exception:
  """nonfinite_error's one line, naming the folder actually read (a MODEL_DIR means its newest
  checkpoint_N) and the last finite checkpoint beside it; for HF, the HF name too."""
  if ckpt.format == "hf":
    from xmtf_pipeline.interop import hf_mapping
    return checkpoints.CheckpointError(
        f"{ckpt.path} holds NaN/Inf values (first in {hf_mapping.to_hf_name(param)[0]}, "
        f"our {param}): the model diverged or its weights are damaged; use a finite one.")
  if "://" in ckpt.path:  # no listing of earlier checkpoints there
    return checkpoints.CheckpointError(
        f"Checkpoint {ckpt.path} holds NaN/Inf values (first in target/{param}): the run "
        "diverged before it was saved; use an earlier checkpoint.")
  return nonfinite_error(ckpt.path, "target/" + param, "use")


# --------------------------------------------------------------------------- what a checkpoint brings with it


class CheckpointContentsError(ValueError):
  """A checkpoint that does not say what it is; the message says what to pass."""


VOCAB_PATH_BINDING = "tasks.vocab.mt5_vocabulary_config.path"


def model_dir_of(checkpoint_path: str) -> str:
  """MODEL_DIR of ``MODEL_DIR`` or ``MODEL_DIR/checkpoint_N``."""
  path = os.path.normpath(checkpoint_path)
  return os.path.dirname(path) if os.path.basename(path).startswith("checkpoint_") else path


def model_config_of(checkpoint_path: str) -> tuple[T5Config, str] | None:
  """The architecture a checkpoint names itself: an HF folder's config.json, a run's config.gin."""
  if hf_import.is_hf_dir(checkpoint_path):
    return (hf_import.t5_config_from_hf(hf_import.read_config(checkpoint_path),
                                        os.path.join(checkpoint_path, "config.json")),
            os.path.join(checkpoint_path, "config.json"))
  model_dir = model_dir_of(checkpoint_path)
  config = run_config.model_config_from_run(run_config.read_run_config(model_dir))
  return (config, os.path.join(model_dir, "config.gin")) if config else None


def bind_model_config(checkpoint_path: str) -> None:
  """Binds MODEL_CONFIG from the checkpoint's own description when no model gin set it."""
  import gin
  found = model_config_of(checkpoint_path)
  if found is None:
    raise CheckpointContentsError(
        f"No model config: {checkpoint_path} is neither a Hugging Face folder (config.json) nor "
        "in a MODEL_DIR with config.gin. Name the model: --model mt5_large (gin/models/*.gin) or "
        "--gin_file=models/mt5_large.gin.")
  config, source = found
  lines = ["from __gin__ import dynamic_registration", "from xmtf_pipeline import network",
           "MODEL_CONFIG = @network.T5Config()"]
  for name in ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers", "num_decoder_layers",
               "head_dim", "mlp_dim", "relpos_num_buckets", "relpos_max_distance",
               "layer_norm_epsilon", "dtype"):
    lines.append(f"MODEL_CONFIG/network.T5Config.{name} = {getattr(config, name)!r}")
  lines.append("MODEL_CONFIG/network.T5Config.dropout_rate = %DROPOUT_RATE")
  with gin.unlock_config():
    gin.parse_config("\n".join(lines))
  print(f"Model: {source} ({config.num_encoder_layers}+{config.num_decoder_layers} layers, "
        f"d_model {config.emb_dim}, {config.vocab_size:,} embeddings)", flush=True)


def checkpoint_vocabulary(checkpoint_path: str) -> tuple[str, int | None, str] | None:
  """The SentencePiece model a checkpoint carries: (path, declared extra ids, note) or None.

  An HF folder's ``spiece.model`` (extra ids from its tokenizer_config.json); for our and T5X
  checkpoints, the run's ``MODEL_DIR/config.gin`` vocabulary, else ``MODEL_DIR/spiece.model``
  (``xmtf import-hf`` keeps it there), else the vocabulary of the run's task, as export-hf
  finds it (e.g. the demo's sample model).
  """
  from tasks import vocab as vocab_lib
  if "://" in checkpoint_path:
    return None
  if hf_import.is_hf_dir(checkpoint_path):
    spm = os.path.join(checkpoint_path, "spiece.model")
    if os.path.isfile(spm):
      return spm, vocab_lib.declared_extra_ids(checkpoint_path), ""
    return None
  model_dir = model_dir_of(checkpoint_path)
  run = run_config.read_run_config(model_dir)
  path = run.get(VOCAB_PATH_BINDING)
  if isinstance(path, str):
    extra = run.get("tasks.vocab.mt5_vocabulary_config.extra_ids")
    return path, extra if isinstance(extra, int) else None, f"from {model_dir}/config.gin"
  spm = os.path.join(model_dir, "spiece.model")
  if os.path.isfile(spm):
    return spm, vocab_lib.declared_extra_ids(model_dir), ""
  if isinstance(run.get("MIXTURE_OR_TASK_NAME"), str):  # as export-hf: the run's task's own
    try:
      path, extra, how = run_config.resolve_spm(None, run, model_dir)
    except run_config.RunConfigError as e:
      print(f"Vocabulary: not found through the run's task ({e})", flush=True)
      return None
    if path == vocab_lib.mt5_vocabulary_config()[0]:
      return None  # the task uses the mT5 default: its usual order (gin, env, GCS) applies
    return path, extra, f"{how}, from {model_dir}/config.gin"
  return None


def choose_vocabulary(checkpoint_path: str | None) -> str:
  """Makes the mT5 vocabulary resolve to the checkpoint's own model unless one was set; returns
  the one line saying which vocabulary is used and why."""
  from tasks import vocab as vocab_lib
  from xmtf_pipeline import gin_config
  found = checkpoint_vocabulary(checkpoint_path) if checkpoint_path else None
  vocab_lib.use_checkpoint_vocabulary(None)
  if gin_config.macro_binding("VOCABULARY") is not None:
    vocabulary = gin_config.evaluate("%VOCABULARY")
    if not isinstance(vocabulary, vocab_lib.LazySentencePieceVocabulary):
      what = getattr(vocabulary, "sentencepiece_model_file", None) or type(vocabulary).__name__
      extra = getattr(vocabulary, "extra_ids", "?")
      ignored = f"; it wins over the checkpoint's own {found[0]}" if found else ""
      return f"Vocabulary: {what} (set by VOCABULARY in gin; {extra} extra ids){ignored}"
  if found:
    vocab_lib.use_checkpoint_vocabulary(*found)
  path, _, how = vocab_lib.mt5_vocabulary_config(describe=True)
  if found and path != found[0]:
    how += f"; it wins over the checkpoint's own {found[0]}"
  return f"Vocabulary: {path} ({how})"
