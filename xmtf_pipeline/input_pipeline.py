"""SeqIO datasets for training and evaluation, as T5X's ``utils.DatasetConfig`` does.

The stream position is an int (batches consumed); with a fixed seed the pipeline
is deterministic, so a restart rebuilds the dataset and skips to that position.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator, Mapping

import numpy as np


class DatasetError(ValueError):
  """A dataset configuration that cannot work; the message says which field and why."""


def error_summary(error: BaseException) -> str:
  """One line: a RecordError's message inside a TF op error (which wraps it in a traceback)."""
  text = str(error)
  marker = "RecordError: "
  if marker in text:
    text = text[text.index(marker) + len(marker):]
  return text.strip().split("\n", 1)[0]


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """One dataset of a run (scoped in gin as ``train/``, ``train_eval/``, ``infer_eval/``)."""
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int] | None
  split: str
  batch_size: int
  shuffle: bool
  seed: int | None = None
  use_cached: bool = False
  pack: bool = False
  module: str | None = None  # imported before lookup (T5X's MIXTURE_OR_TASK_MODULE)


def _seqio():
  """seqio, imported only when a dataset is built (it brings TensorFlow)."""
  import seqio
  import tensorflow as tf
  # Keep TensorFlow off accelerators: JAX owns them (T5X does the same, flax#445).
  tf.config.set_visible_devices([], "GPU")
  return seqio


def get_task(cfg: DatasetConfig):
  seqio = _seqio()
  if cfg.module:
    importlib.import_module(cfg.module)
  try:
    return seqio.get_mixture_or_task(cfg.mixture_or_task_name)
  except ValueError:
    known = sorted(seqio.MixtureRegistry.names()) + sorted(seqio.TaskRegistry.names())
    hint = ", ".join(known[:30]) + (" ..." if len(known) > 30 else "")
    raise DatasetError(
        f"MIXTURE_OR_TASK_NAME={cfg.mixture_or_task_name!r} is not registered. Import its module "
        f"from your gin file (e.g. `import tasks.xp3`). Registered: {hint or 'none'}.") from None


def validate(cfg: DatasetConfig, num_shards: int = 1) -> None:
  """Checks feature lengths and batch divisibility before any work is done."""
  task = get_task(cfg)
  features = set(task.output_features)
  if cfg.task_feature_lengths is not None:
    lengths = dict(cfg.task_feature_lengths)
    missing = sorted(features - set(lengths))
    if missing:
      raise DatasetError(
          f"TASK_FEATURE_LENGTHS={lengths} is missing feature(s) {missing} of "
          f"{cfg.mixture_or_task_name!r}; e.g. --gin.TASK_FEATURE_LENGTHS=\"{{'inputs': 1024, "
          "'targets': 1024}\".")
    bad = {k: v for k, v in lengths.items() if not isinstance(v, int) or v <= 0}
    if bad:
      raise DatasetError(f"TASK_FEATURE_LENGTHS values must be positive ints, got {bad}.")
  if cfg.batch_size <= 0 or cfg.batch_size % num_shards:
    raise DatasetError(
        f"BATCH_SIZE={cfg.batch_size} is not divisible by the data-parallel size {num_shards}; "
        "choose a multiple of it.")


def get_dataset(cfg: DatasetConfig, seed: int | None, shard_id: int = 0, num_shards: int = 1,
                num_epochs: int | None = None, skip_batches: int = 0):
  """A tf.data dataset of per-host batches (numpy dicts with EncDecFeatureConverter features)."""
  seqio = _seqio()
  validate(cfg, num_shards)
  import tensorflow as tf
  converter = seqio.EncDecFeatureConverter(pack=cfg.pack)
  try:
    ds = seqio.get_dataset(
        mixture_or_task_name=cfg.mixture_or_task_name,
        task_feature_lengths=dict(cfg.task_feature_lengths) if cfg.task_feature_lengths else None,
        dataset_split=cfg.split,
        shuffle=cfg.shuffle,
        num_epochs=num_epochs,
        feature_converter=converter,
        shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards),
        use_cached=cfg.use_cached,
        seed=seed,
    )
  except DatasetError:
    raise
  # Missing folders, empty files and bad settings of the sources: the user's input, one line.
  except (FileNotFoundError, ValueError, tf.errors.OpError) as e:
    raise DatasetError(f"{cfg.mixture_or_task_name!r} ({cfg.split}): {error_summary(e)}") from None
  ds = ds.batch(cfg.batch_size // num_shards, drop_remainder=True)
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.prefetch(2)


def iterate(ds, name: str = "the dataset") -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches; a data error (a malformed record, an unreadable file) is one DatasetError.

  The TF error carries a traceback of the input pipeline's Python function. The iterator is
  dropped before raising so its prefetch threads stop now rather than at interpreter exit,
  where a thread still inside ``tf.numpy_function`` can deadlock the shutdown.
  """
  import tensorflow as tf
  iterator = ds.as_numpy_iterator()
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      message = error_summary(e)
    else:
      yield {k: np.asarray(v) for k, v in batch.items()}
      continue
    del iterator
    raise DatasetError(f"reading {name}: {message}")
