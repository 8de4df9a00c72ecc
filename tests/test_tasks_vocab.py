"""tasks.vocab: the lazily resolved mT5 vocabulary and the bundled tiny one."""

import pytest
import sentencepiece as spm
import tasks_testlib
from tasks_testlib import SAMPLE_SPM

import gin
from tasks import vocab


@pytest.fixture
def clean_gin():
  yield
  gin.clear_config()


def test_default_is_mt5_gcs_model_and_nothing_is_loaded(monkeypatch):
  monkeypatch.delenv(vocab.MT5_SPM_ENV, raising=False)
  assert vocab.mt5_vocabulary_config() == (vocab.MT5_SPM_GCS, 0)
  v = vocab.LazySentencePieceVocabulary()
  assert v._model is None  # constructing (as task registration does) reads nothing


def test_env_and_gin_swap_the_model(monkeypatch, clean_gin):
  tasks_testlib.use_tiny_vocab(monkeypatch)
  v = vocab.mt5_vocabulary()
  assert v.vocab_size == 500 and v.extra_ids == 100  # the sample model gets its sentinels
  assert v.decode(v.encode("Which language is this?")) == "Which language is this?"
  monkeypatch.setenv(vocab.MT5_SPM_ENV, "/nonexistent/env.model")
  gin.parse_config(f"tasks.vocab.mt5_vocabulary_config.path = '{SAMPLE_SPM}'\n"
                   "tasks.vocab.mt5_vocabulary_config.extra_ids = 0")
  assert vocab.mt5_vocabulary_config() == (SAMPLE_SPM, 0)  # gin wins over the env var
  assert v.vocab_size == 400  # re-resolved after the binding changed
  assert v == vocab.LazySentencePieceVocabulary("mt5")


def test_missing_vocabulary_path_is_a_clear_error(monkeypatch, clean_gin):
  monkeypatch.setenv(vocab.MT5_SPM_ENV, "/no/such/sentencepiece.model")
  with pytest.raises(vocab.VocabularyError, match=r"'/no/such/sentencepiece.model' does not exist"
                     r".*MT5_SPM_PATH.*xp3_sample.model"):
    vocab.mt5_vocabulary().encode("x")
  gin.parse_config("tasks.vocab.mt5_vocabulary_config.path = '/no/gin.model'")
  with pytest.raises(vocab.VocabularyError, match=r"/no/gin.model.*tasks.vocab.mt5_vocabulary_config"):
    vocab.mt5_vocabulary().vocab_size  # noqa: B018


def test_sample_model_ids_and_sentinels():
  sp = spm.SentencePieceProcessor(model_file=SAMPLE_SPM)
  assert (sp.get_piece_size(), sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (400, 0, 1,
                                                                                         2, -1)
  v = vocab.sample_vocabulary()
  assert v.vocab_size == 500 <= 512  # fits gin/models/mt5_tiny.gin NUM_EMBEDDINGS
  # Sentinels count down from the top, as span corruption expects: <extra_id_0> = 499.
  assert v.tokenizer.piece_to_id("▁<extra_id_0>") == 499
  assert v.tokenizer.piece_to_id("▁<extra_id_99>") == 400
  # Byte fallback: characters never seen in training round-trip instead of becoming <unk>.
  text = "Ωμέγα ✓ ☃"  # (NFKC-stable characters: the model normalises like mT5)
  assert 2 not in v.encode(text) and v.decode(v.encode(text)) == text
