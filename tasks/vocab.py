"""SentencePiece vocabularies: mT5's (swappable by one gin binding or env var) and the sample's.

Tasks are registered at import, before gin bindings are parsed, so the mT5 vocabulary resolves its
path lazily, on first use: ``tasks.vocab.mt5_vocabulary_config.path`` (gin; ``--spm_model``), else
the checkpoint folder's own model (``xmtf eval``/``infer`` on a Hugging Face folder's
``spiece.model``, see use_checkpoint_vocabulary), else ``MT5_SPM_PATH`` (env), else mT5's GCS
model. The model gin can use the same object, so one binding swaps both:

    VOCABULARY = @tasks.vocab.mt5_vocabulary()
    tasks.vocab.mt5_vocabulary_config.path = '/data/mt5/sentencepiece.model'

Sentinels (extra ids): ``tasks.vocab.mt5_vocabulary_config.extra_ids`` (gin), else the checkpoint
folder's declaration (``tokenizer_config.json`` ``extra_ids``), else read from the model file: 0
when it already holds ``<extra_id_0>`` (mT5's 250,000 + 100 = 250,100 pieces; HF's
``vocab_size`` 250,112 is that rounded up to a multiple of 128, so ``vocab_size`` - pieces = 12
are padding rows, not sentinels), else T5's 100 appended after the pieces. Whether they fit is
checked against the model's embeddings (evaluation.check_vocabulary).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
from pathlib import Path

import seqio
import tensorflow as tf

import gin

MT5_SPM_GCS = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
MT5_SPM_ENV = "MT5_SPM_PATH"
# mT5's model already holds 100 sentinel pieces (250,000 + 100 = 250,100), hence extra_ids=0.
MT5_EXTRA_IDS = 0

# Package data (setup.cfg), so it is found the same way in a checkout and in a wheel install.
SAMPLE_SPM = Path(importlib.resources.files("tasks"), "data", "spm", "xp3_sample.model").resolve()
# The sample model has 400 pieces and no sentinels; seqio appends 100 (ids 400..499) so span
# corruption has sentinels and the whole vocabulary fits the tiny model's 512 embeddings.
SAMPLE_EXTRA_IDS = 100


class VocabularyError(ValueError):
  """A vocabulary path that cannot be used; the message says which setting to change."""


# The checkpoint folder's SentencePiece model: (path, extra ids or None, where it was found).
_checkpoint_vocabulary: tuple[str, int | None, str] | None = None


def use_checkpoint_vocabulary(path: str | None, extra_ids: int | None = None,
                              note: str = "") -> None:
  """The evaluated checkpoint's own model (e.g. an HF folder's spiece.model), or None to forget it.

  It is used when no gin binding names a vocabulary, before ``MT5_SPM_PATH`` and GCS;
  ``note`` says where it was found when that is not the path itself.
  """
  global _checkpoint_vocabulary
  _checkpoint_vocabulary = (path, extra_ids, note) if path else None


@gin.configurable(module="tasks.vocab")
def mt5_vocabulary_config(path: str | None = None, extra_ids: int | None = None,
                          describe: bool = False):
  """(path, extra_ids) of the mT5-family vocabulary (the module docstring has the order).

  With ``describe``: (path, extra_ids, one phrase saying where each came from).
  """
  folder = _checkpoint_vocabulary
  if path:
    source = "set by --spm_model / tasks.vocab.mt5_vocabulary_config.path"
  elif folder:
    source = "the checkpoint's own" + (f", {folder[2]}" if folder[2] else "")
    if os.environ.get(MT5_SPM_ENV):
      source += f"; env {MT5_SPM_ENV} is not used"
  elif os.environ.get(MT5_SPM_ENV):
    source = f"from env {MT5_SPM_ENV}"
  else:
    source = "mT5's default on GCS"
  resolved = path or (folder and folder[0]) or os.environ.get(MT5_SPM_ENV) or MT5_SPM_GCS
  if extra_ids is not None:
    how = "extra_ids from gin tasks.vocab.mt5_vocabulary_config.extra_ids"
  elif folder and resolved == folder[0] and folder[1] is not None:
    extra_ids, how = folder[1], ("extra_ids declared with it" if folder[2] else
                                 "extra_ids declared in the folder's tokenizer_config.json")
  else:
    extra_ids, how = infer_extra_ids(resolved)
  return (resolved, extra_ids, f"{source}; {extra_ids} {how}") if describe else (resolved,
                                                                                 extra_ids)


def infer_extra_ids(path: str) -> tuple[int, str]:
  """(sentinels to append to the model file at ``path``, why): 0 if it holds them, else 100.

  Remote files other than mT5's and unreadable local ones are not opened: 0, mT5's convention
  (a missing file fails later, naming the setting).
  """
  if _same_file(path, SAMPLE_SPM):
    return SAMPLE_EXTRA_IDS, "extra ids appended (the bundled sample model has no sentinels)"
  if "://" in path:
    return MT5_EXTRA_IDS, "extra ids (a remote mT5-family model holds its 100 sentinels)"
  try:
    pieces, has_sentinels = _spm_pieces(str(Path(path).resolve()), os.path.getmtime(path))
  except (OSError, RuntimeError):
    return MT5_EXTRA_IDS, "extra ids (the model file could not be read)"
  if has_sentinels:
    return 0, f"extra ids appended (its {pieces:,} pieces include the sentinels <extra_id_0>...)"
  return 100, f"extra ids appended after its {pieces:,} pieces (it holds no sentinels; T5's 100)"


@functools.lru_cache(maxsize=16)
def _spm_pieces(path: str, mtime: float) -> tuple[int, bool]:
  """(pieces, whether <extra_id_0> is one of them) of a SentencePiece model file."""
  import sentencepiece as spm

  sp = spm.SentencePieceProcessor(model_file=path)
  unk = sp.unk_id()
  has = any(sp.piece_to_id(p) != unk for p in ("<extra_id_0>", "\u2581<extra_id_0>"))
  return sp.get_piece_size(), has


def declared_extra_ids(folder: str) -> int | None:
  """``extra_ids`` of an HF folder's tokenizer_config.json (HF's T5Tokenizer writes it), if any."""
  try:
    with open(os.path.join(folder, "tokenizer_config.json")) as f:
      value = json.load(f).get("extra_ids")
  except (OSError, ValueError, AttributeError):
    return None
  return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _same_file(path: str, other: Path) -> bool:
  try:
    return "://" not in path and Path(path).resolve() == other
  except OSError:
    return False


def check_spm_path(path: str, setting: str) -> str:
  """Raises a VocabularyError if a local model file is missing (GCS paths are not probed)."""
  if "://" in path:
    return path
  if not tf.io.gfile.exists(path):
    raise VocabularyError(
        f"SentencePiece model {path!r} does not exist (set by {setting}). Fix the path, or unset "
        f"it to use mT5's {MT5_SPM_GCS}; for tests and the CPU demo use {SAMPLE_SPM}.")
  return path


class LazySentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePieceVocabulary whose file and extra ids are looked up when first needed.

  Equality is by role (every instance of the mT5 vocabulary is equal), so mixtures of tasks built
  before and after a gin binding still agree; the file is re-resolved if the binding changes.
  """

  def __init__(self, role: str = "mt5"):
    super().__init__(sentencepiece_model_file="", extra_ids=0)
    self._role = role
    self._resolved: tuple[str, int] | None = None

  def _resolve(self) -> tuple[str, int]:
    path, extra_ids = mt5_vocabulary_config()
    setting = ("gin tasks.vocab.mt5_vocabulary_config.path or env "
               f"{MT5_SPM_ENV}={os.environ.get(MT5_SPM_ENV, '')!r}")
    return check_spm_path(path, setting), extra_ids

  def _model_context(self):
    resolved = self._resolve()
    if self._model is None or resolved != self._resolved:
      self._model = None
      self._sentencepiece_model_file, self._extra_ids = resolved
      self._resolved = resolved
      try:
        return super()._model_context()
      except Exception as e:  # TF's GCS/HTTP errors: offline, no credentials, a typo'd bucket
        if "://" not in resolved[0]:
          raise
        self._resolved = None
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        what = "mT5's vocabulary on GCS" if resolved[0] == MT5_SPM_GCS else "a remote file"
        raise VocabularyError(
            f"Cannot read the SentencePiece model {resolved[0]}, {what} ({type(e).__name__}: "
            f"{first}). Offline, copy it once (gsutil cp {resolved[0]} .) and point "
            f"{MT5_SPM_ENV}=/path/sentencepiece.model or the gin binding "
            "tasks.vocab.mt5_vocabulary_config.path at the local file.") from None
    return self._model

  @property
  def extra_ids(self) -> int:
    self._model_context()
    return self._extra_ids

  def __eq__(self, other):
    return isinstance(other, LazySentencePieceVocabulary) and other._role == self._role

  def __hash__(self):
    return hash(("LazySentencePieceVocabulary", self._role))

  def __str__(self) -> str:
    return f"LazySentencePieceVocabulary(role={self._role}, resolved={self._resolved})"


_MT5 = LazySentencePieceVocabulary("mt5")


@gin.configurable(module="tasks.vocab")
def mt5_vocabulary() -> seqio.Vocabulary:
  """The vocabulary of every full-size task (xP3, xP3mt, P3, mC4)."""
  return _MT5


@gin.configurable(module="tasks.vocab")
def sample_vocabulary() -> seqio.SentencePieceVocabulary:
  """The bundled sample's tiny vocabulary (400 pieces + 100 sentinels = 500 ids)."""
  return seqio.SentencePieceVocabulary(str(SAMPLE_SPM), extra_ids=SAMPLE_EXTRA_IDS)


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """T5X finetuning's features: both tokenized with EOS appended after trimming."""
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True),
  }
