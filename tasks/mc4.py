"""mC4 span-corruption tasks (mT5's pretraining objective), per language, and the ``mc4`` mixture.

``import tasks.mc4`` registers ``mc4_{lang}`` for mT5's 107 mC4 languages (``-`` -> ``_``, e.g.
``mc4_zh_Latn``) and the mixture ``mc4`` (rate ∝ n**0.3, n = documents per language, as mT5).

Source, resolved when data are first read:
* local JSON lines in the allenai/c4 multilingual layout if gin ``tasks.mc4.mc4_dir.path`` or env
  ``MC4_DIR`` is set: ``{dir}[/multilingual]/c4-{lang}.tfrecord-NNNNN-of-MMMMM.json[.gz]`` (train)
  and ``c4-{lang}-validation.tfrecord-...json[.gz]``; grouped 3.1.0 shards ``c4-{lang}.NNNNN-...``
  are accepted too. Records need a string ``text`` field.
* otherwise TFDS ``c4/multilingual:3.0.1`` (splits ``{lang}`` / ``{lang}-validation``), with
  ``tasks.mc4.tfds_data_dir.path`` or ``--tfds_data_dir``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf
from absl import logging

import gin
from tasks import languages, registry, span_corruption, vocab
from tasks.preprocessors import check_vocabularies, rekey_text_as_targets
from tasks.sources import JsonlSource, env_or
from tasks.training_mixture import TrainingMixture

TFDS_NAME = "c4/multilingual:3.0.1"
ALPHA = 0.3
SHUFFLE_BUFFER_SIZE = 10_000


class MC4DataMissingError(FileNotFoundError):
  """mC4 files that are not where the configuration says."""


@gin.configurable(module="tasks.mc4")
def mc4_dir(path: str | None = None) -> str | None:
  """Folder of local allenai/c4 multilingual files; env ``MC4_DIR``; None: use TFDS."""
  return env_or(path, "MC4_DIR")


@gin.configurable(module="tasks.mc4")
def tfds_data_dir(path: str | None = None) -> str | None:
  """``data_dir`` for the TFDS source (None: TFDS's default or ``--tfds_data_dir``)."""
  return path


@gin.configurable(module="tasks.mc4")
def mc4_rates(alpha: float = ALPHA, example_counts: Mapping[str, float] | None = None):
  """gin knobs of the ``mc4`` mixture: alpha and optional documents per language (skips counting)."""
  return alpha, example_counts


def task_name(lang: str) -> str:
  return f"mc4_{lang.replace('-', '_')}"


def _json_files(lang: str, split: str) -> list[str]:
  root = mc4_dir().rstrip("/")
  folder = f"{root}/multilingual" if tf.io.gfile.isdir(f"{root}/multilingual") else root
  if not tf.io.gfile.isdir(folder):
    raise MC4DataMissingError(
        f"mC4 folder {folder!r} (env MC4_DIR or gin tasks.mc4.mc4_dir.path) does not exist. "
        "Download with: hf download allenai/c4 --repo-type dataset --include "
        f"'multilingual/c4-{lang}*' --local-dir {root}; or unset it to read TFDS {TFDS_NAME}.")
  if split == "validation":
    patterns = [f"c4-{lang}-validation.*.json*"]
  else:
    patterns = [f"c4-{lang}.tfrecord-*.json*", f"c4-{lang}.[0-9]*.json*"]
  files = sorted({f for p in patterns for f in tf.io.gfile.glob(f"{folder}/{p}")})
  if not files:
    raise MC4DataMissingError(
        f"No mC4 {split} files for language {lang!r} in {folder} (looked for {patterns}). "
        "Download with: hf download allenai/c4 --repo-type dataset --include "
        f"'multilingual/c4-{lang}*' --local-dir {root}")
  return files


class MC4Source(seqio.DataSource):
  """Local allenai/c4 JSON files if ``mc4_dir`` is set, else TFDS; decided at first read."""

  def __init__(self, lang: str):
    super().__init__(splits=("train", "validation"))
    self._lang = lang
    # mC4 has separate validation files: the inner sources hold nothing out.
    self._json = {
        split: JsonlSource(functools.partial(_json_files, lang, split), fields=("text",),
                           holdout=lambda: None, list_fields=(),
                           description=f"mC4 {lang} {split}")
        for split in ("train", "validation")}
    # read_only: a missing TFDS copy is an error, never a (multi-TB) download_and_prepare.
    self._tfds = seqio.TfdsDataSource(
        tfds_name=TFDS_NAME, splits={"train": lang, "validation": f"{lang}-validation"},
        read_only=True)

  def __repr__(self):
    return f"MC4Source({self._lang})"

  def _local(self) -> bool:
    return bool(mc4_dir())

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True if self._local() else self._tfds.supports_arbitrary_sharding

  def list_shards(self, split: str):
    return self._json[split].files() if self._local() else self._tfds.list_shards(split)

  def num_input_examples(self, split: str) -> int | None:
    # seqio asks at every get_dataset; counting local mC4 would read it all, so only TFDS answers.
    return None if self._local() else self._tfds.num_input_examples(split)

  def count_documents(self, split: str = "train") -> int | None:
    """Documents in a split: counted in local files (slow for real mC4), or TFDS metadata."""
    if self._local():
      return sum(_count(f) for f in self._json[split].files())
    return self._tfds.num_input_examples(split)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    if split not in self.splits:
      raise ValueError(f"Unknown split {split!r} for mC4 {self._lang}: use train or validation.")
    if self._local():
      # Each split has its own files; the inner source holds nothing out, so read its "train".
      return self._json[split].get_dataset("train", shuffle, seed, shard_info)
    if tfds_data_dir():
      self._tfds = seqio.TfdsDataSource(
          tfds_name=TFDS_NAME, tfds_data_dir=tfds_data_dir(),
          splits={"train": self._lang, "validation": f"{self._lang}-validation"}, read_only=True)
    ds = self._tfds.get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info)
    return ds.map(lambda x: {"text": x["text"]})


def _count(path: str) -> int:
  logging.info("Counting mC4 documents in %s (bind tasks.mc4.mc4_rates.example_counts to skip).",
               path)
  compression = "GZIP" if path.endswith(".gz") else ""
  return int(tf.data.TextLineDataset(path, compression_type=compression).reduce(
      tf.constant(0, tf.int64), lambda n, _: n + 1))


def mc4_preprocessors() -> list:
  """mT5's chain: text -> targets, tokenize, cache point, span corruption, EOS after trim."""
  return [check_vocabularies, rekey_text_as_targets, seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(), span_corruption.span_corruption,
          seqio.preprocessors.append_eos_after_trim]


def register_language(lang: str) -> seqio.Task:
  return registry.add_task(
      task_name(lang), source=MC4Source(lang),
      output_features=vocab.output_features(vocab.mt5_vocabulary()),
      preprocessors=mc4_preprocessors(), shuffle_buffer_size=SHUFFLE_BUFFER_SIZE)


class _DocumentsRate:
  """n**alpha, n = documents per language (gin counts, else the source's count), lazily."""

  def __init__(self, lang: str):
    self.lang = lang

  def __call__(self, task: seqio.Task) -> float:
    alpha, counts = mc4_rates()
    n = (counts or {}).get(self.lang)
    if n is None:
      n = task.source.count_documents("train")
    if n is None:
      raise ValueError(f"Cannot count documents of {task.name}; bind tasks.mc4.mc4_rates."
                       "example_counts = {'<lang>': n, ...}.")
    if n < 0:
      raise ValueError(f"mC4 document count for {self.lang!r} is negative ({n}).")
    return float(n) ** alpha


def register_mc4_mixture(name: str = "mc4", langs: Sequence[str] | None = None) -> str:
  """Registers an α-sampled mixture over ``langs`` (default: all) and returns its name."""
  langs = languages.check_languages(langs if langs is not None else languages.MC4_LANGUAGES,
                                    "mC4", known=languages.MC4_LANGUAGES)
  return registry.add_mixture(name, [(task_name(lang), _DocumentsRate(lang)) for lang in langs],
                              mixture_cls=TrainingMixture).name


def register_all() -> None:
  for lang in languages.MC4_LANGUAGES:
    register_language(lang)
  register_mc4_mixture("mc4")


register_all()
