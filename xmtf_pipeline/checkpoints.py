"""Orbax checkpoints in T5X's layout: ``MODEL_DIR/checkpoint_<step>/{state,dataset}``.

``state`` holds ``{'target': params, 'state': {'step', 'param_states'}}``;
``dataset`` holds the input position and seeds (JSON), so a restarted run
continues the very same stream. Saves are synchronous and atomic (orbax writes a
temporary folder and renames it when complete), so a crash mid-save never
touches the latest good checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
import shutil
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

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


def manager(directory: str, keep: int | None = None, create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, step_prefix=STEP_PREFIX,
                                         enable_async_checkpointing=False, create=create)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_handlers={"state": ocp.StandardCheckpointHandler(),
                                              "dataset": ocp.JsonCheckpointHandler()})


class Checkpointer:
  """Saves and restores one run's checkpoints under MODEL_DIR."""

  def __init__(self, model_dir: str, keep: int | None = None):
    self.model_dir = model_dir
    self._manager = manager(model_dir, keep)

  def save(self, step: int, state_dict: Any, data_state: dict[str, Any]) -> None:
    """Saves atomically; a full disk is one CheckpointError saying how much space it needs."""
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _closed_loop_stragglers_dropped(previous_hook)
    try:
      with _orbax_logs_muted():
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state_dict), dataset=ocp.args.JsonSave(data_state)),
            force=True)
        self._manager.wait_until_finished()
      sys.unraisablehook = previous_hook
    except Exception as e:
      # The failed save's other writes end later, on their own threads: TensorStore prints each
      # one's 'Event loop is closed' as unraisable (the hook's filter stays) and asyncio logs each
      # abandoned task when it is collected (its logger stays muted). The run stops on this
      # error, so nothing after it is hidden but the echoes of this save.
      logging.getLogger("asyncio").setLevel(logging.CRITICAL)
      if not _is_disk_full(e):
        raise
      need = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree_util.tree_leaves(state_dict))
      free = shutil.disk_usage(self.model_dir).free
      raise CheckpointError(
          f"Disk full: checkpoint_{step} needs about {_gib(need)} in {self.model_dir} and "
          f"{_gib(free)} is free; it was not saved (orbax writes to a temporary folder, so no "
          "checkpoint on disk was touched). Free space or move MODEL_DIR.") from None

  def steps(self) -> list[int]:
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def restore_latest(self, target: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """Newest checkpoint that restores; an unreadable one is set aside with a warning.

    A checkpoint whose shapes (read from its metadata, before any restore) do not
    fit ``target`` is a configuration error: CheckpointError, nothing is moved.
    Only a checkpoint that cannot be read at all is set aside (renamed
    ``*.unreadable``), and at most one per start: if the previous one cannot be
    read either, the start stops instead of walking back through the run.
    """
    set_aside = None
    for step in reversed(self.steps()):
      name = f"{STEP_PREFIX}_{step}"
      error: Exception | None = None
      try:
        saved = saved_shapes(self._manager, step)
      except Exception as e:  # no readable metadata: a half-written or damaged checkpoint
        saved, error = None, e
      if saved is not None:
        mismatch = first_mismatch(saved, _shapes_of(target))
        if mismatch:
          raise CheckpointError(
              f"MODEL_DIR {self.model_dir} holds {name}, which does not fit the configured "
              f"model: {mismatch}. Nothing was changed: restart with the configuration that "
              f"wrote it (see {os.path.join(self.model_dir, 'config.gin')}), or train this "
              "model in a new MODEL_DIR.")
        try:
          restored = self._manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(target), dataset=ocp.args.JsonRestore()))
          return step, restored["state"], dict(restored["dataset"])
        except Exception as e:  # metadata fine, arrays damaged
          error = e
      reason = f"{type(error).__name__}: {_plain(first_line(error))}"
      if set_aside is not None:
        raise CheckpointError(
            f"{name} in {self.model_dir} cannot be read either ({reason}); this start already "
            f"set aside {os.path.basename(set_aside)} and moves no more. Check the storage, then "
            f"move {name} away yourself (or restore it from a copy) and restart.")
      set_aside = self._set_aside(step)
      print(f"warning: skipping unreadable checkpoint {name} in {self.model_dir} ({reason}); "
            f"kept it as {os.path.basename(set_aside)} and restoring the previous one.",
            flush=True)
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


def _gib(n: int) -> str:
  return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def _closed_loop_stragglers_dropped(hook):
  """sys.unraisablehook without the 'Event loop is closed' errors of a failed save's late writes."""
  def filtered(unraisable):
    if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
      return
    hook(unraisable)
  return filtered


def _is_disk_full(error: BaseException | None) -> bool:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


@contextlib.contextmanager
def _orbax_logs_muted():
  """orbax logs each failing write's traceback (about 140 lines on a full disk) before raising;
  the raised error is what the run reports, in one line."""
  loggers = [logging.getLogger(n) for n in ("absl", "orbax", "jax._src.distributed", "asyncio")]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


def _plain(text: str) -> str:
  """TensorStore's messages carry pybind11 source locations; users need the words only."""
  return re.sub(r"\s*\[source locations='[^']*'\]|\s*\(pybind11[^)]*\)", "", text).strip()


_STEP_DIR = re.compile(re.escape(STEP_PREFIX) + r"_(\d+)")


def previous_checkpoint(path: str) -> str | None:
  """The newest ``checkpoint_<n>`` beside ``path`` (a checkpoint_<step> folder) with n < step."""
  path = os.path.abspath(path)
  m = _STEP_DIR.fullmatch(os.path.basename(path))
  if not m:
    return None
  parent = os.path.dirname(path)
  try:
    steps = [int(x[1]) for n in os.listdir(parent) if (x := _STEP_DIR.fullmatch(n))
             and int(x[1]) < int(m[1]) and os.path.isdir(os.path.join(parent, n))]
  except OSError:
    return None
  return os.path.join(parent, f"{STEP_PREFIX}_{max(steps)}") if steps else None


def first_line(e: BaseException | None) -> str:
  text = str(e) if e is not None else ""
  return text.splitlines()[0][:300] if text else ""


def saved_shapes(manager: ocp.CheckpointManager, step: int) -> dict[str, tuple[int, ...]]:
  """{'target/…' | 'state/…': shape} of a checkpoint's ``state`` item, from its metadata only."""
  meta = manager.item_metadata(step)["state"]
  tree = getattr(meta, "tree", meta)
  if not isinstance(tree, dict) or "target" not in tree:
    raise CheckpointError(f"{STEP_PREFIX}_{step} has no 'target' parameters in its metadata.")
  return _shapes_of(tree)


def _shapes_of(tree: Any, prefix: str = "") -> dict[str, tuple[int, ...]]:
  out: dict[str, tuple[int, ...]] = {}
  if hasattr(tree, "shape") and not isinstance(tree, dict):
    out[prefix] = tuple(tree.shape)
  elif isinstance(tree, dict):
    for k, v in tree.items():
      out.update(_shapes_of(v, f"{prefix}/{k}" if prefix else str(k)))
  elif tree is not None:
    out[prefix] = tuple(getattr(tree, "shape", ()))
  return out


def first_mismatch(saved: dict[str, tuple[int, ...]], want: dict[str, tuple[int, ...]]
                   ) -> str | None:
  """The first parameter (then optimizer slot) whose shape differs, in words; or None."""
  def order(name):  # parameters before optimizer state, then by name
    return (not name.startswith("target/"), name)

  for name in sorted(set(saved) | set(want), key=order):
    what = "model" if name.startswith("target/") else "optimizer"
    if name not in saved:
      return f"{name} (shape {want[name]} in the configured {what}) is not in the checkpoint"
    if name not in want:
      return f"the checkpoint has {name} (shape {saved[name]}), which the configured {what} lacks"
    if tuple(saved[name]) != tuple(want[name]):
      return (f"{name} has shape {tuple(saved[name])} in the checkpoint but the configured {what} "
              f"expects {tuple(want[name])}")
  return None
