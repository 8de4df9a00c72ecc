"""``xmtf train`` / ``python -m xmtf_pipeline.train``: T5X's train.py on our engine.

Flags as T5X: ``--gin_file`` (repeatable), ``--gin_bindings``, ``--gin.NAME=VALUE``,
``--gin_search_paths``, ``--tfds_data_dir``, ``--seqio_additional_cache_dirs`` and
the multi-process flags. Run configs live in ``gin/runs/``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import gin
from xmtf_pipeline import (
  checkpoints,
  distributed,
  flags,
  gin_config,
  input_pipeline,
  layer_stacking,
  models,
  params,
  partitioning,
  run_lock,
  run_logging,
  trainer,
)
from xmtf_pipeline.adafactor import Adafactor
from xmtf_pipeline.interop import restore
from xmtf_pipeline.partitioning import Partitioner
from xmtf_pipeline.run_logging import RunLogger

DESCRIPTION = """Train or finetune an mT5/mT0 model with gin configs (T5X's flags and gin names).

Example (mT0-style finetuning from an mT5 checkpoint; recipes in gin/mt0/):
  xmtf train --gin_file=models/mt5_large.gin --gin_file=runs/finetune.gin \\
    --gin.MODEL_DIR=\\"/runs/mt0\\" --gin.MIXTURE_OR_TASK_NAME=\\"xp3\\" \\
    --gin.MIXTURE_OR_TASK_MODULE=\\"tasks.xp3\\" --gin.TRAIN_STEPS=1_025_000 \\
    --gin.INITIAL_CHECKPOINT_PATH=\\"/ckpts/mt5_large/checkpoint_1000000\\"

Checkpoints, config.gin and TensorBoard events go to MODEL_DIR; a restart resumes there."""


class TrainError(RuntimeError):
  """The run cannot start or continue; the message says why and what to do."""


@dataclasses.dataclass
class TrainResult:
  start_step: int
  final_step: int
  first_loss: float | None
  last_loss: float | None
  eval_metrics: dict[str, float]
  preempted: bool = False
  stop_signal: int | None = None  # signal.SIGTERM or signal.SIGINT when preempted


def _check_model_dir(model_dir: str) -> None:
  try:
    os.makedirs(model_dir, exist_ok=True)
    # One probe per process: hosts sharing MODEL_DIR must not remove each other's.
    probe = os.path.join(model_dir, f".write_test.{jax.process_index()}.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise TrainError(f"MODEL_DIR {model_dir!r} is not writable ({e.strerror}); set "
                     "--gin.MODEL_DIR to a directory you can write.") from e


class _Preemption:
  """SIGTERM and a first SIGINT (Ctrl-C) become a flag checked between steps.

  The loop then saves a checkpoint and stops (``main`` exits 0 after SIGTERM,
  130 after SIGINT). A second SIGINT aborts at once without saving; the newest
  checkpoint on disk is untouched (saves are atomic).
  """

  def __init__(self):
    self.signal: int | None = None
    self._previous: dict[int, Any] = {}

  @property
  def requested(self) -> bool:
    return self.signal is not None

  @property
  def name(self) -> str:
    return "SIGINT" if self.signal == signal.SIGINT else "SIGTERM"

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: no handler
        pass
    return self

  def _handle(self, signum, frame):
    if signum == signal.SIGINT and self.signal is not None:
      sys.stdout.flush()
      sys.stderr.write("\nSecond Ctrl-C: aborting without saving; the newest checkpoint in "
                       "MODEL_DIR is intact.\n")
      sys.stderr.flush()
      os._exit(130)
    if self.signal is None:
      self.signal = signum
    if signum == signal.SIGINT:
      sys.stderr.write("\nCtrl-C: saving a checkpoint after the current step, then exiting "
                       "(Ctrl-C again aborts without saving).\n")
      sys.stderr.flush()

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous if previous is not None else signal.SIG_DFL)


def _seed(value: int | None) -> int:
  """RANDOM_SEED, or a time-based one agreed by all processes (host 0's, as T5X)."""
  if value is not None:
    return int(value)
  seed = np.int32(time.time_ns() % (2**31 - 1))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    seed = multihost_utils.broadcast_one_to_all(seed)
  return int(seed)


def train(*, model: models.EncoderDecoderModel, model_dir: str,
          train_dataset_cfg: input_pipeline.DatasetConfig,
          checkpoint_cfg: checkpoints.CheckpointConfig, optimizer: Adafactor,
          learning_rate_fn: Callable, total_steps: int,
          train_eval_dataset_cfg: input_pipeline.DatasetConfig | None = None,
          eval_period: int = 1000, eval_steps: int = 20, random_seed: int | None = None,
          num_microbatches: int = 1, log_period: int = 100,
          partitioner: Partitioner | None = None, progress_bar: bool = True,
          validation_suite: str | None = None,
          validation_max_examples: int | None = None,
          validation_data_dir: str | None = None) -> TrainResult:
  """Trains until the global step reaches ``total_steps`` (absolute, as in T5X).

  With ``validation_suite``, rank-classification validation runs every ``eval_period``
  steps on the live parameters and is stored where ``xmtf select-checkpoint`` reads it.
  """
  partitioner = partitioner or Partitioner()
  shard_id, num_shards = partitioner.data_layout()
  _check_model_dir(model_dir)
  for cfg in (train_dataset_cfg, train_eval_dataset_cfg):
    if cfg is not None:
      input_pipeline.validate(cfg, num_shards)
      _check_divisible(cfg, partitioner.data_parallel_size, num_microbatches)
  # Before anything in MODEL_DIR is read, renamed or written: one job per MODEL_DIR.
  with run_lock.RunLock(model_dir, jax.process_index() == 0,
                         distributed.process_zero_agrees if jax.process_count() > 1 else None):
    ckpt = checkpoints.Checkpointer(model_dir, checkpoint_cfg.keep)
    try:
      return _train_locked(model, model_dir, train_dataset_cfg, checkpoint_cfg, optimizer,
                           learning_rate_fn, total_steps, train_eval_dataset_cfg, eval_period,
                           eval_steps, random_seed, num_microbatches, log_period, partitioner,
                           progress_bar, validation_suite, validation_max_examples,
                           validation_data_dir, ckpt)
    finally:
      ckpt.close()


def _train_locked(model, model_dir, train_dataset_cfg, checkpoint_cfg, optimizer,
                  learning_rate_fn, total_steps, train_eval_dataset_cfg, eval_period, eval_steps,
                  random_seed, num_microbatches, log_period, partitioner, progress_bar,
                  validation_suite, validation_max_examples, validation_data_dir,
                  ckpt) -> TrainResult:
  shard_id, num_shards = partitioner.data_layout()
  state, disk, data_state = _restore_or_init(model, optimizer, ckpt, checkpoint_cfg,
                                             random_seed, train_dataset_cfg, partitioner)
  shardings = disk.shardings
  start_step = int(state.step)
  if jax.process_index() == 0:
    note = run_logging.record_config(model_dir, gin.operative_config_str(), start_step)
    if note:
      print(note, flush=True)
  if start_step >= total_steps:
    print(f"Step {start_step} >= TRAIN_STEPS={total_steps}: nothing to train "
          "(TRAIN_STEPS is absolute and counts restored steps).")
    return TrainResult(start_step, start_step, None, None, {})
  if jax.process_index() == 0:
    print(_start_line(model, partitioner, start_step, total_steps, model_dir, train_dataset_cfg),
          flush=True)

  rng = jax.random.PRNGKey(data_state["random_seed"])
  step_fn = trainer.jit_train_step(model, optimizer, learning_rate_fn, num_microbatches,
                                   partitioner, shardings)
  ds = input_pipeline.get_dataset(train_dataset_cfg, data_state["data_seed"], shard_id, num_shards,
                                  skip_batches=data_state["batches"])
  batches = input_pipeline.iterate(
      ds, f"the training data of {train_dataset_cfg.mixture_or_task_name!r}")
  logger = RunLogger(model_dir, total_steps, start_step, train_dataset_cfg.batch_size,
                     log_period, progress_bar)
  eval_fn = eval_ds = None
  if train_eval_dataset_cfg is not None and eval_period:
    eval_fn = trainer.jit_eval_step(model, partitioner, shardings["target"])
    eval_ds = train_eval_dataset(train_eval_dataset_cfg, eval_steps, shard_id, num_shards)
  validate = _validation_hook(model, model_dir, train_dataset_cfg, validation_suite,
                              validation_max_examples, validation_data_dir)
  saver = _Saver(ckpt, disk, logger)
  first_loss = last_loss = None
  eval_metrics: dict[str, float] = {}
  preempted = False
  step = saved = start_step
  try:
    with _Preemption() as preemption:  # SIGTERM / Ctrl-C: save, then stop
      while step < total_steps:
        try:
          batch = next(batches)
        except StopIteration:
          raise TrainError(f"The training data of {train_dataset_cfg.mixture_or_task_name!r} "
                           f"ran out at step {step}; use num_epochs=None (repeat).") from None
        state, stats = step_fn(state, partitioner.shard_batch(batch), rng)
        step += 1
        data_state["batches"] += 1
        logger.record(stats)
        if step % log_period == 0 or step == total_steps:
          metrics = _flush(logger, step, ckpt)
          first_loss = metrics["loss"] if first_loss is None else first_loss
          last_loss = metrics["loss"]
        if eval_fn is not None and step % eval_period == 0:
          eval_metrics = run_train_eval(eval_fn, state.params, train_eval_dataset_cfg, eval_ds,
                                        shard=partitioner.shard_batch)
          logger.write_eval(step, eval_metrics)
        if validate is not None and eval_period and step % eval_period == 0:
          logger.write_validation(step, validate(jax.device_get(state.params), step))
        if step % checkpoint_cfg.save_period == 0 or step == total_steps or preemption.requested:
          saver.save(step, state, data_state)
          saved = step
        if preemption.requested:
          print(f"{preemption.name}: saved checkpoint_{step} in {model_dir}; exiting (run the "
                "same command to continue).", flush=True)
          preempted = True
          break
  except (input_pipeline.DatasetError, TrainError) as e:
    # A data error leaves the state of the last finished step intact: keep that work.
    if step > saved and not isinstance(e, _NotSaved):
      saver.save_before_stopping(step, state, data_state, e)
    raise
  finally:
    logger.close()
  return TrainResult(start_step, step, first_loss, last_loss, eval_metrics, preempted,
                     preemption.signal if preempted else None)


def _start_line(model, partitioner, start_step, total_steps, model_dir, cfg) -> str:
  c = model.config
  size = f"{params.count(c):,} parameters, "
  start = "from scratch" if start_step == 0 else f"from step {start_step}"
  return (f"Training {start} to step {total_steps} on {cfg.mixture_or_task_name!r}: model "
          f"{size}{c.num_encoder_layers}+{c.num_decoder_layers} layers, d_model {c.emb_dim}; "
          f"{partitioner.describe()}; MODEL_DIR {model_dir}")


class _NotSaved(TrainError):
  """The run stopped without saving (non-finite state, a failed save): nothing more to save."""


class _Saver:
  """Writes checkpoints only of finite states, and says what is on disk when it cannot."""

  def __init__(self, ckpt: checkpoints.Checkpointer, disk: DiskLayout, logger: RunLogger):
    self._ckpt, self._disk, self._logger = ckpt, disk, logger

  def newest(self) -> str:
    steps = self._ckpt.steps()
    return (f"checkpoint_{steps[-1]} is the newest checkpoint in {self._ckpt.model_dir} and is "
            "intact" if steps else f"no checkpoint was saved in {self._ckpt.model_dir} yet")

  def save(self, step: int, state: trainer.TrainState, data_state: dict[str, Any]) -> None:
    _flush(self._logger, step, self._ckpt, require_finite_only=True)
    state_dict = state.state_dict()
    bad = trainer.nonfinite_leaves(state_dict)
    if bad:
      raise _NotSaved(
          f"The train state became NaN/Inf at or before step {step} (first in {bad[0]}; "
          f"{len(bad)} arrays) while the loss was still finite; stopping without saving: "
          f"{self.newest()}. Lower the learning rate or check the data, then restart.")
    try:
      self._ckpt.save(step, self._disk.to_disk(state_dict), data_state)
    except checkpoints.CheckpointError as e:
      raise _NotSaved(f"{e} {self.newest()}.") from None
    if jax.process_index() == 0:
      self._logger.write_line(f"saved checkpoint_{step} in {self._ckpt.model_dir}")

  def save_before_stopping(self, step: int, state: trainer.TrainState,
                           data_state: dict[str, Any], error: BaseException) -> None:
    try:
      self.save(step, state, data_state)
    except Exception as e:  # the original error stays the one reported
      print(f"Could not save before stopping ({checkpoints.first_line(e)}).", file=sys.stderr,
            flush=True)
      return
    print(f"Stopping at step {step}: saved checkpoint_{step} first (the state after the last "
          "finished step); fix the cause below, then run the same command to continue.",
          file=sys.stderr, flush=True)


def _flush(logger: RunLogger, step: int, ckpt: checkpoints.Checkpointer,
           require_finite_only: bool = False) -> dict[str, float]:
  """Fetches pending statistics; a non-finite loss stops the run before any save."""
  summary = logger.flush(step, write=not require_finite_only)
  if summary.get("nonfinite", 0):
    steps = ckpt.steps()
    on_disk = (f"checkpoint_{steps[-1]} is the newest checkpoint in {ckpt.model_dir} and is "
               "intact" if steps else f"no checkpoint was saved in {ckpt.model_dir} yet")
    raise _NotSaved(
        f"Loss became NaN/Inf at or before step {step}; stopping without saving: {on_disk}. "
        "Lower the learning rate, check the data, or use bf16 not fp16.")
  return summary


def _validation_hook(model, model_dir, train_cfg, suite, max_examples, data_dir):
  """None, or ``fn(params, step)``; data from ``data_dir``, else the bundled real rows."""
  if not suite:
    return None
  if jax.process_count() > 1:
    raise TrainError("VALIDATION_SUITE runs on one process only; run `xmtf select-checkpoint` "
                     "after training on multi-host runs.")
  from tasks import heldout
  from xmtf_pipeline import checkpoint_selection
  vocab = input_pipeline.get_task(train_cfg).output_features["targets"].vocabulary
  return checkpoint_selection.validation_hook(model_dir, suite, model, vocab,
                                              data_dir=data_dir or str(heldout.BUNDLED_DIR),
                                              max_examples=max_examples)


def _check_divisible(cfg: input_pipeline.DatasetConfig, data_parallel: int,
                     num_microbatches: int) -> None:
  if cfg.batch_size % data_parallel:
    raise TrainError(
        f"BATCH_SIZE={cfg.batch_size} ({cfg.split}) is not divisible by the data-parallel size "
        f"{data_parallel} (devices / num_partitions); choose a multiple of {data_parallel}.")
  if cfg.batch_size % (data_parallel * num_microbatches) and cfg.split == "train":
    raise TrainError(
        f"BATCH_SIZE={cfg.batch_size} does not split into NUM_MICROBATCHES={num_microbatches} "
        f"per data-parallel shard ({data_parallel} shards).")


def _restore_or_init(model, optimizer, ckpt, checkpoint_cfg, random_seed, train_cfg, partitioner):
  """T5X's order: latest in MODEL_DIR, else INITIAL_CHECKPOINT_PATH, else scratch.

  Restores land directly in the partitioner's shardings, whatever mesh saved them.
  """
  seed = _seed(random_seed)
  state, shardings = trainer.init_state(model, optimizer, partitioner, jax.random.PRNGKey(seed))
  disk = DiskLayout(model, optimizer, partitioner, shardings)
  restored = ckpt.restore_latest(disk.target(state.state_dict()))
  if restored is not None:
    step, state_dict, data_state = restored
    _refuse_nonfinite(state_dict, os.path.join(ckpt.model_dir, f"checkpoint_{step}"),
                      "move it and the newer checkpoints out of MODEL_DIR and restart from")
    print(f"Restored checkpoint_{step} from {ckpt.model_dir} (data position "
          f"{data_state['batches']} batches).", flush=True)
    return trainer.TrainState.from_state_dict(disk.to_run(state_dict)), disk, data_state
  data_state = {"batches": 0, "random_seed": seed,
                "data_seed": int(train_cfg.seed) if train_cfg.seed is not None else seed}
  if checkpoint_cfg.restore_path:
    state_dict = restore.restore_state(checkpoint_cfg.restore_path, disk.config,
                                             disk.target(state.state_dict()))
    _refuse_nonfinite(state_dict, checkpoint_cfg.restore_path,
                      "set INITIAL_CHECKPOINT_PATH to")
    state = trainer.TrainState.from_state_dict(disk.to_run(state_dict))
    print(f"Initialized from {checkpoint_cfg.restore_path} at step {int(state.step)}.", flush=True)
  return state, disk, data_state


def _refuse_nonfinite(state_dict: Any, path: str, verb: str) -> None:
  """A restored state with NaN/Inf stops the start (it would only die at its first step)."""
  bad = trainer.nonfinite_leaves(state_dict)
  if bad:
    raise restore.nonfinite_error(path, bad[0], verb)


class DiskLayout:
  """Checkpoints always hold T5X's per-layer layout; a scanned run converts on the way.

  ``target`` is what to restore into, ``to_run`` / ``to_disk`` convert a state dict
  (identities for unscanned models; jitted, sharded re-stacking for scanned ones).
  """

  def __init__(self, model, optimizer, partitioner, shardings):
    self.shardings = shardings
    self.config = model.config.replace(scan_layers=False)
    self._scanned = model.config.scan_layers
    if not self._scanned:
      return
    self._abstract = trainer.abstract_state(self.config, optimizer, partitioner)
    disk_shardings = jax.tree_util.tree_map(lambda x: x.sharding, self._abstract)
    self._stack = jax.jit(lambda t: layer_stacking.stack(t, self.config), out_shardings=shardings)
    self._unstack = jax.jit(lambda t: layer_stacking.unstack(t, self.config),
                            out_shardings=disk_shardings)

  def target(self, run_state_dict):
    return self._abstract if self._scanned else run_state_dict

  def to_run(self, state_dict):
    return self._stack(state_dict) if self._scanned else state_dict

  def to_disk(self, state_dict):
    return self._unstack(state_dict) if self._scanned else state_dict


def train_eval_dataset(cfg: input_pipeline.DatasetConfig, eval_steps: int, shard_id: int = 0,
                       num_shards: int = 1):
  """The first ``eval_steps`` batches (all if 0) of the train_eval split, one epoch.

  Built once per run and iterated afresh at each evaluation, as T5X does: building a mixture's
  pipeline costs about 0.3 s per task (the 12-task bundled sample: 3-5 s), every time.
  """
  ds = input_pipeline.get_dataset(cfg, cfg.seed, shard_id, num_shards, num_epochs=1)
  return ds.take(eval_steps) if eval_steps else ds


def run_train_eval(eval_fn, params_tree, cfg: input_pipeline.DatasetConfig, ds,
                   shard=None) -> dict[str, float]:
  """Teacher-forced loss and accuracy over the batches of ``ds`` (``train_eval_dataset``)."""
  totals: dict[str, Any] = {}
  n = 0
  for batch in input_pipeline.iterate(ds):
    stats = jax.device_get(eval_fn(params_tree, shard(batch) if shard else batch))
    totals = {k: totals.get(k, 0.0) + np.asarray(v) for k, v in stats.items()}
    n += 1
  if not n:
    raise TrainError(f"The {cfg.split!r} split of {cfg.mixture_or_task_name!r} yielded no full "
                     f"batch of {cfg.batch_size}; lower the train_eval batch size.")
  metrics = models.metrics_from_stats(totals)
  metrics["loss"] = float(totals["loss"]) / n  # mean of per-batch normalized losses
  metrics["batches"] = n
  return metrics


def main(argv: list[str] | None = None, prog: str = "xmtf train") -> int:
  """Exit status: 0 done (or stopped by SIGTERM after saving), 2 bad input, 130 Ctrl-C."""
  return run_main(argv, prog)[0]


def run_main(argv: list[str] | None = None, prog: str = "xmtf train"
             ) -> tuple[int, TrainResult | None]:
  """``main`` that also returns the run's result (None when it did not run)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    args = flags.build_arg_parser(prog, DESCRIPTION).parse_args(
        gin_config.rewrite_gin_args(argv))
    if args.multiprocess_gpu:
      distributed.initialize(args.coordinator_address, args.process_count, args.process_index,
                             args.distributed_timeout_s)
    flags.configure_data(args)
    gin_config.parse(args.gin_file, args.gin_bindings, flags.search_paths(args), finalize=False)
    gin_config.check_macros()
    run = gin_config.get_configurable(train)
    result = run()
  except (gin_config.GinConfigError, TrainError, input_pipeline.DatasetError,
          distributed.DistributedError, partitioning.PartitioningError,
          checkpoints.CheckpointError, params.ParamMismatchError, run_lock.RunLockError,
          ValueError) as e:
    # gin appends "In call to configurable ..." to errors raised inside a configurable.
    message = "\n".join(line for line in str(e).splitlines()
                        if not line.strip().startswith("In call to configurable"))
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2, None
  except KeyboardInterrupt:  # Ctrl-C before the training loop: nothing new to save
    print(f"\n{prog}: interrupted before training started; nothing was saved.", file=sys.stderr)
    return 130, None
  if result.last_loss is not None:
    print(f"Done: step {result.start_step} -> {result.final_step}, "
          f"loss {result.first_loss:.4f} -> {result.last_loss:.4f}.")
  return (130 if result.stop_signal == signal.SIGINT else 0), result


if __name__ == "__main__":
  from xmtf_pipeline import tensorflow_import
  tensorflow_import.import_quietly()
  from xmtf_pipeline import train as _train_module  # gin binds the importable module, not __main__
  sys.exit(_train_module.main(prog="python -m xmtf_pipeline.train"))
