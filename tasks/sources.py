"""SeqIO data sources over JSON-lines files and over HF ``datasets``, resolved lazily.

Both sources look their files up only when a dataset is requested (never at import), read them in
a deterministic order, hold out a validation slice by line number (xP3 ships a train split only),
shard per data-parallel host and stay checkpointable: every stage is a plain tf.data op, and
parsing is a *stateless* ``tf.numpy_function``, so T5X can save the iterator position.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import Callable, Sequence

import numpy as np
import seqio
import tensorflow as tf
from absl import logging

import gin
from tasks.preprocessors import RecordError, parse_json_line, validate_record

_PARSE_BATCH = 256
_CYCLE_LENGTH = 64


@gin.configurable(module="tasks.sources")
def skip_malformed_records(skip: bool = False) -> bool:
  """gin flag: skip (log and count) malformed lines instead of raising. Off by default."""
  return skip


def _validated_columns(records, num_fields: int, skips) -> tuple[np.ndarray, ...]:
  """Columns of UTF-8 field values and an ok-mask from zero-argument record validators.

  A validator raising RecordError stops the input unless skip_malformed_records is on; then
  the record is counted in ``skips`` and yields empty fields with ok=False (filtered later).
  """
  skip = skip_malformed_records()
  out = [[] for _ in range(num_fields)]
  ok = []
  for validate in records:
    try:
      values = validate()
      ok.append(True)
    except RecordError as e:
      if not skip:
        raise
      skips.add(e)
      values = ("",) * num_fields
      ok.append(False)
    for column, value in zip(out, values):
      column.append(value.encode("utf-8"))
  return (*[np.array(c, dtype=object) for c in out], np.array(ok, dtype=bool))


class EmptyDataError(ValueError):
  """An input file with no bytes; the message names it."""


@dataclasses.dataclass(frozen=True)
class Holdout:
  """Validation = lines (rows) whose 0-based number within their file is a multiple of ``every``.

  ``max_examples`` caps the validation rows taken from each file (None: no cap). Training reads
  every other line, so the two splits never overlap and need no line count.
  """
  every: int = 100
  max_examples: int | None = None

  def __post_init__(self):
    if self.every < 2:
      raise ValueError(f"Holdout.every must be >= 2 (got {self.every}): validation takes 1 line "
                       "in `every`, so 1 would leave nothing to train on.")


class _SkipCounter:
  """Counts skipped lines per source, for the log."""

  def __init__(self):
    self.count = 0
    self._lock = threading.Lock()

  def add(self, error: Exception) -> None:
    with self._lock:
      self.count += 1
      n = self.count
    logging.warning("Skipping malformed record (%d skipped so far in this source): %s", n, error)


def _split_filter(split: str, holdout: Holdout | None):
  """(index, ...) -> keep? for the split; raises for an unknown split name. No hold-out: all."""
  if split not in ("train", "validation"):
    raise ValueError(f"Unknown split {split!r}: these sources have 'train' and 'validation'.")
  if holdout is None:
    return lambda i, *_: tf.constant(True)
  every = tf.constant(holdout.every, tf.int64)
  if split == "validation":
    return lambda i, *_: tf.equal(i % every, 0)
  return lambda i, *_: tf.not_equal(i % every, 0)


def _count_lines(path: str) -> int:
  """Lines as TextLineDataset sees them (a last line without a newline counts too)."""
  n, last = 0, b"\n"
  with tf.io.gfile.GFile(path, "rb") as f:
    while chunk := f.read(1 << 22):
      n += chunk.count(b"\n")
      last = chunk[-1:]
  return n + (last != b"\n")


_LINE_COUNTS: dict[tuple[str, int, int], int] = {}


def count_lines(path: str) -> int:
  """Lines in a (plain) file, cached by path, size and mtime."""
  st = tf.io.gfile.stat(path)
  key = (path, st.length, st.mtime_nsec)
  if key not in _LINE_COUNTS:
    _LINE_COUNTS[key] = _count_lines(path)
  return _LINE_COUNTS[key]


def split_size(lines: int, split: str, holdout: Holdout | None) -> int:
  if holdout is None:
    return lines
  val = (lines + holdout.every - 1) // holdout.every
  if holdout.max_examples is not None:
    val = min(val, holdout.max_examples)
  return val if split == "validation" else lines - (lines + holdout.every - 1) // holdout.every


class JsonlSource(seqio.DataSource):
  """JSON lines -> ``{field: tf.string}``; ``files_fn()`` lists the files when data is needed.

  Args:
    files_fn: returns the files (raises a clear error if the data are missing).
    fields: output feature names, read from the record keys ``keys`` (defaults to ``fields``).
    holdout: returns the validation hold-out rule (called at read time, so gin can set it late);
      returning None means no hold-out (the files are one split already).
    list_fields: fields that may hold a one-element list (old xP3 dumps).
    count_examples: count lines to report ``num_input_examples`` (small local data only).
    description: for logs and errors.
  """

  def __init__(self, files_fn: Callable[[], Sequence[str]], fields: Sequence[str] = ("inputs",
               "targets"), keys: Sequence[str] | None = None,
               holdout: Callable[[], Holdout] = Holdout, list_fields: Sequence[str] = ("targets",),
               count_examples: bool = False, description: str = "jsonl"):
    super().__init__(splits=("train", "validation"))
    self._files_fn = files_fn
    self._fields = tuple(fields)
    self._keys = tuple(keys or fields)
    self._holdout_fn = holdout
    self._list_fields = tuple(list_fields)
    self._count = count_examples
    self._description = description
    self._skips = _SkipCounter()

  def __repr__(self):
    return f"JsonlSource({self._description})"

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True  # get_dataset shards by file or by line itself.

  @property
  def skipped_records(self) -> int:
    return self._skips.count

  def files(self) -> list[str]:
    return sorted(self._files_fn())

  def list_shards(self, split: str) -> Sequence[str]:
    return self.files()

  def num_input_examples(self, split: str) -> int | None:
    if not self._count:
      return None
    holdout = self._holdout_fn()
    return sum(split_size(count_lines(f), split, holdout) for f in self.files())

  def _parse_batch(self, paths, numbers, lines):
    return _validated_columns(
        (functools.partial(parse_json_line, line, f"{path.decode()}:{int(number) + 1}",
                           self._keys, self._list_fields)
         for path, number, line in zip(paths, numbers, lines)), len(self._fields), self._skips)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    holdout = self._holdout_fn()
    keep = _split_filter(split, holdout)
    files = self.files()
    if not files:
      raise FileNotFoundError(f"{self._description}: no input files.")
    # An empty file (a failed download) would make a training stream that yields nothing.
    empty = [f for f in files if tf.io.gfile.stat(f).length == 0]
    if empty:
      raise EmptyDataError(
          f"{self._description}: {empty[0]} is empty"
          f"{f' (and {len(empty) - 1} more files)' if len(empty) > 1 else ''}; download it "
          "again or remove it from the folder.")
    gz = {f.endswith(".gz") for f in files}
    if len(gz) > 1:
      raise ValueError(f"{self._description}: mixes .gz and plain files; keep one kind per folder.")
    compression = "GZIP" if gz.pop() else ""
    # Shard by file when there are enough files (each host reads only its own), else by line.
    by_file = shard_info is not None and len(files) >= shard_info.num_shards
    if by_file:
      files = files[shard_info.index::shard_info.num_shards]
    # Line sharding needs the same file order on every host: without a seed, keep it sorted.
    if shuffle and len(files) > 1 and (seed is not None or shard_info is None or by_file):
      files = list(np.random.default_rng(seed).permutation(files))

    def read(path):
      lines = tf.data.TextLineDataset(path, compression_type=compression).enumerate()
      lines = lines.filter(keep)
      if split == "validation" and holdout is not None and holdout.max_examples is not None:
        lines = lines.take(holdout.max_examples)
      return lines.map(lambda i, line: (path, i, line))

    ds = tf.data.Dataset.from_tensor_slices(files)
    # Up to 64 files are read round-robin. Per-prompt folders hold hundreds of files, each sorted
    # by input, so prefer the merged (pre-shuffled) files for training when you have them.
    ds = ds.interleave(read, cycle_length=min(len(files), _CYCLE_LENGTH), block_length=1)
    if shard_info is not None and not by_file:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    return self._parse(ds)

  def _parse(self, ds: tf.data.Dataset) -> tf.data.Dataset:
    n = len(self._fields)

    def parse(paths, numbers, lines):
      outs = tf.numpy_function(self._parse_batch, [paths, numbers, lines],
                               [tf.string] * n + [tf.bool], stateful=False)
      return {**{k: tf.ensure_shape(v, [None]) for k, v in zip(self._fields, outs[:n])},
              "_ok": tf.ensure_shape(outs[n], [None])}

    ds = ds.batch(_PARSE_BATCH).map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                                    deterministic=True).unbatch()
    ds = ds.filter(lambda x: x["_ok"])
    return ds.map(lambda x: {k: x[k] for k in self._fields})


class HFDatasetsSource(seqio.DataSource):
  """Records through HF ``datasets``: ``load_fn()`` returns a ``datasets.Dataset`` when needed.

  Rows are addressed by index (a checkpointable ``range`` dataset), so order, hold-out and
  sharding match the JSON-lines source for a single merged file.
  """

  def __init__(self, load_fn: Callable[[], object], fields: Sequence[str] = ("inputs", "targets"),
               holdout: Callable[[], Holdout] = Holdout, list_fields: Sequence[str] = ("targets",),
               description: str = "HF datasets"):
    super().__init__(splits=("train", "validation"), caching_permitted=True)
    self._load_fn = load_fn
    self._fields = tuple(fields)
    self._holdout_fn = holdout
    self._list_fields = tuple(list_fields)
    self._description = description
    self._dataset = None
    self._lock = threading.Lock()
    self._skips = _SkipCounter()

  def __repr__(self):
    return f"HFDatasetsSource({self._description})"

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def dataset(self):
    with self._lock:
      if self._dataset is None:
        self._dataset = self._load_fn()
      return self._dataset

  def list_shards(self, split: str) -> Sequence[str]:
    return [self._description]

  def num_input_examples(self, split: str) -> int | None:
    return split_size(len(self.dataset()), split, self._holdout_fn())

  def _fetch(self, indices):
    rows = self.dataset()[[int(i) for i in indices]]
    # Arrow fills a field missing from a line with None: report it as missing.
    return _validated_columns(
        (functools.partial(validate_record, {k: v[j] for k, v in rows.items() if v[j] is not None},
                           f"{self._description} row {int(index)}", self._fields,
                           self._list_fields)
         for j, index in enumerate(indices)), len(self._fields), self._skips)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    del shuffle, seed, sequence_length, use_cached, num_epochs  # seqio shuffles after the source.
    holdout = self._holdout_fn()
    keep = _split_filter(split, holdout)
    ds = tf.data.Dataset.range(len(self.dataset())).filter(keep)
    if split == "validation" and holdout is not None and holdout.max_examples is not None:
      ds = ds.take(holdout.max_examples)
    if shard_info is not None:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    n = len(self._fields)

    def fetch(indices):
      outs = tf.numpy_function(self._fetch, [indices], [tf.string] * n + [tf.bool],
                               stateful=False)
      return {**{k: tf.ensure_shape(v, [None]) for k, v in zip(self._fields, outs[:n])},
              "_ok": tf.ensure_shape(outs[n], [None])}

    ds = ds.batch(_PARSE_BATCH).map(fetch, num_parallel_calls=tf.data.AUTOTUNE,
                                    deterministic=True).unbatch()
    return ds.filter(lambda x: x["_ok"]).map(lambda x: {k: x[k] for k in self._fields})


def load_json_with_datasets(files: Sequence[str], description: str, cache_dir: str | None = None):
  """``datasets.load_dataset('json', data_files=...)`` with errors that say what to check."""
  import datasets

  try:
    return datasets.load_dataset("json", data_files=list(files), split="train",
                                 cache_dir=cache_dir)
  except Exception as e:  # datasets wraps parser errors in several types.
    raise RecordError(
        f"HF datasets could not read {description} ({', '.join(files[:3])}"
        f"{', ...' if len(files) > 3 else ''}): {type(e).__name__}: {e}. The JSON-lines source "
        "(tasks without '_hf') names the offending file:line; validate the files with it.") from e


def env_or(value: str | None, env: str) -> str | None:
  """A gin value, else the environment variable, else None."""
  return value or os.environ.get(env) or None
