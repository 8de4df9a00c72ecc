"""Any checkpoint, whatever wrote it: INITIAL_CHECKPOINT_PATH and parameters for eval/export.

Above the format readers: ours (orbax, checkpoints), T5X's (t5x_import, legacy msgpack +
TensorStore or orbax, local or gs://) and Hugging Face's (hf_import). ``damaged`` turns an
unreadable array in any of them into one line that names the array and the previous checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from xmtf_pipeline import checkpoints
from xmtf_pipeline import params as params_lib
from xmtf_pipeline.interop import hf_import, t5x_import
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


def _checkpoint_step_dir(path: str) -> tuple[str, int]:
  """Accepts MODEL_DIR (newest checkpoint) or MODEL_DIR/checkpoint_N."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise checkpoints.CheckpointError(f"INITIAL_CHECKPOINT_PATH {path} does not exist.")
  base = os.path.basename(path)
  if base.startswith(checkpoints.STEP_PREFIX + "_") and base[len(checkpoints.STEP_PREFIX) + 1:].isdigit():
    return os.path.dirname(path), int(base[len(checkpoints.STEP_PREFIX) + 1:])
  mngr = checkpoints.manager(path, create=False)
  latest = mngr.latest_step()
  if latest is None:
    raise checkpoints.CheckpointError(
        f"INITIAL_CHECKPOINT_PATH {path} holds no checkpoint_<step> folder; point it at a "
        "checkpoint directory such as MODEL_DIR/checkpoint_1000.")
  return path, latest


def restore_initial(path: str, config: T5Config, target: Any, params_only: bool = False) -> Any:
  """The full train state (params, Adafactor state, step) of INITIAL_CHECKPOINT_PATH.

  Accepts, besides our own checkpoints: a Hugging Face MT5 directory
  (safetensors or pytorch_model.bin, single or sharded; Adafactor then starts
  from zero accumulators at step 0, since HF weights carry no optimizer state),
  and native T5X checkpoints, legacy msgpack + TensorStore or orbax, local or
  gs:// (their params, Adafactor state and step, as T5X's own restore).
  The parameter tree is checked against the model config first, so a checkpoint
  of another size fails naming the first mismatching parameter and both shapes.
  ``params_only`` (evaluation, inference, selection): the parameters and the step
  only, whatever optimizer configuration wrote the checkpoint (T5X's factoring settings,
  momentum): T5X checkpoints' optimizer slots are neither checked nor read, ours are
  restored as saved and dropped by the caller.
  """
  if hf_import.is_hf_dir(path):
    return hf_import.restore_state(path, config, target)
  if path.startswith("gs://"):
    return t5x_import.restore_state(path, config, target, params_only)
  try:
    _, location = t5x_import.detect_layout(path)
  except checkpoints.CheckpointError:
    location = None  # not a checkpoint at all: the message below says what is expected
  if location is not None and not t5x_import.is_own_orbax_checkpoint(location.path):
    return t5x_import.restore_state(location.path, config, target, params_only)
  directory, step = _checkpoint_step_dir(path)
  step_dir = f"{directory}/{checkpoints.STEP_PREFIX}_{step}"
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
  params_lib.check_params(shapes, config, source=f"INITIAL_CHECKPOINT_PATH {path}")
  saved_state = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype),
                                       dict(tree["state"]), is_leaf=lambda m: hasattr(m, "shape"))
  if not params_only:
    _check_optimizer_state(saved_state, target["state"], step_dir)
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


def _check_optimizer_state(saved: Any, want: Any, source: str) -> None:
  saved, want = params_lib.flatten(saved), params_lib.flatten(want)
  for name, like in want.items():
    got = saved.get(name)
    if got is None or tuple(got.shape) != tuple(like.shape):
      raise checkpoints.CheckpointError(
          f"INITIAL_CHECKPOINT_PATH {source}: state/{name} has shape "
          f"{None if got is None else tuple(got.shape)} but the optimizer expects "
          f"{tuple(like.shape)}; the checkpoint was written with another Adafactor "
          "configuration (factored, min_dim_size_to_factor, beta1): use the same one.")


@dataclasses.dataclass
class _Shaped:
  shape: tuple[int, ...]
