"""Orbax checkpoints in T5X's layout: ``MODEL_DIR/checkpoint_<step>/{state,dataset}``.

``state`` holds ``{'target': params, 'state': {'step', 'param_states'}}``;
``dataset`` holds the input position and seeds (JSON), so a restarted run
continues the very same stream. Saves are synchronous and atomic (orbax writes a
temporary folder and renames it when complete), so a crash mid-save never
touches the latest good checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from xmtf_pipeline import params as params_lib
from xmtf_pipeline.network import T5Config

log = logging.getLogger(__name__)
STEP_PREFIX = "checkpoint"


class CheckpointError(ValueError):
  """A checkpoint path that cannot be restored; the message says why."""


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """What to restore when MODEL_DIR has no checkpoint, and how often to save."""
  restore_path: str | None = None  # INITIAL_CHECKPOINT_PATH
  save_period: int = 5000
  keep: int | None = None  # None keeps all

  def __post_init__(self):
    if self.save_period <= 0:
      raise ValueError(f"CheckpointConfig.save_period must be positive, got {self.save_period}.")
    if self.keep is not None and self.keep <= 0:
      raise ValueError(f"CheckpointConfig.keep must be positive or None, got {self.keep}.")


def _manager(directory: str, keep: int | None = None, create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, step_prefix=STEP_PREFIX,
                                         enable_async_checkpointing=False, create=create)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_handlers={"state": ocp.StandardCheckpointHandler(),
                                              "dataset": ocp.JsonCheckpointHandler()})


class Checkpointer:
  """Saves and restores one run's checkpoints under MODEL_DIR."""

  def __init__(self, model_dir: str, keep: int | None = None):
    self.model_dir = model_dir
    self._manager = _manager(model_dir, keep)

  def save(self, step: int, state_dict: Any, data_state: dict[str, Any]) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state_dict), dataset=ocp.args.JsonSave(data_state)),
        force=True)
    self._manager.wait_until_finished()

  def steps(self) -> list[int]:
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def restore_latest(self, target: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """Newest checkpoint that restores; a broken one is skipped with a warning."""
    for step in reversed(self.steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), dataset=ocp.args.JsonRestore()))
        return step, restored["state"], dict(restored["dataset"])
      except Exception as e:  # a half-written or damaged checkpoint: fall back
        moved = self._set_aside(step)
        log.warning("Skipping %s: it cannot be restored (%s: %s); moved to %s.", moved,
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "", moved)
        print(f"warning: skipping unreadable checkpoint {STEP_PREFIX}_{step} in {self.model_dir} "
              f"({type(e).__name__}); kept it as {os.path.basename(moved)} and restoring the "
              "previous one.", flush=True)
    return None

  def _set_aside(self, step: int) -> str:
    """Renames a broken checkpoint (never deletes data) so the step can be saved again."""
    src = os.path.join(self.model_dir, f"{STEP_PREFIX}_{step}")
    dst, n = src + ".unreadable", 1
    while os.path.exists(dst):
      n += 1
      dst = f"{src}.unreadable{n}"
    os.rename(src, dst)
    self._manager.reload()
    return dst

  def close(self) -> None:
    self._manager.close()


def _checkpoint_step_dir(path: str) -> tuple[str, int]:
  """Accepts MODEL_DIR (newest checkpoint) or MODEL_DIR/checkpoint_N."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f"INITIAL_CHECKPOINT_PATH {path} does not exist.")
  base = os.path.basename(path)
  if base.startswith(STEP_PREFIX + "_") and base[len(STEP_PREFIX) + 1:].isdigit():
    return os.path.dirname(path), int(base[len(STEP_PREFIX) + 1:])
  mngr = _manager(path, create=False)
  latest = mngr.latest_step()
  if latest is None:
    raise CheckpointError(
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
  ``params_only`` (evaluation): our checkpoints' optimizer state is restored as
  saved, whatever Adafactor configuration wrote it.
  """
  from xmtf_pipeline import hf_import, t5x_import  # lazy: only INITIAL_CHECKPOINT_PATH needs them

  if hf_import.is_hf_dir(path):
    return hf_import.restore_state(path, config, target)
  if path.startswith("gs://"):
    return t5x_import.restore_state(path, config, target)
  try:
    _, location = t5x_import.detect_layout(path)
  except CheckpointError:
    location = None  # not a checkpoint at all: the message below says what is expected
  if location is not None and not t5x_import.is_own_orbax_checkpoint(location.path):
    return t5x_import.restore_state(location.path, config, target)
  directory, step = _checkpoint_step_dir(path)
  mngr = _manager(directory, create=False)
  try:
    meta = mngr.item_metadata(step)["state"]
  except Exception as e:
    raise CheckpointError(f"{directory}/{STEP_PREFIX}_{step} is not a readable checkpoint: "
                          f"{type(e).__name__}: {e}") from e
  tree = getattr(meta, "tree", meta)
  if not isinstance(tree, dict) or "target" not in tree:
    raise CheckpointError(f"{directory}/{STEP_PREFIX}_{step} has no 'target' parameters.")
  shapes = jax.tree_util.tree_map(lambda m: _Shaped(tuple(m.shape)), dict(tree["target"]))
  params_lib.check_params(shapes, config, source=f"INITIAL_CHECKPOINT_PATH {path}")
  saved_state = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype),
                                       dict(tree["state"]), is_leaf=lambda m: hasattr(m, "shape"))
  if params_only:
    target = {"target": target["target"], "state": saved_state}
  else:
    _check_optimizer_state(saved_state, target["state"], f"{directory}/{STEP_PREFIX}_{step}")
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return restored["state"]


def _check_optimizer_state(saved: Any, want: Any, source: str) -> None:
  saved, want = params_lib.flatten(saved), params_lib.flatten(want)
  for name, like in want.items():
    got = saved.get(name)
    if got is None or tuple(got.shape) != tuple(like.shape):
      raise CheckpointError(
          f"INITIAL_CHECKPOINT_PATH {source}: state/{name} has shape "
          f"{None if got is None else tuple(got.shape)} but the optimizer expects "
          f"{tuple(like.shape)}; the checkpoint was written with another Adafactor "
          "configuration (factored, min_dim_size_to_factor, beta1): use the same one.")


@dataclasses.dataclass
class _Shaped:
  shape: tuple[int, ...]
