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


def test_extra_ids_are_read_from_the_model_file(tmp_path, monkeypatch, clean_gin):
  """A spiece.model path no longer means 0 extra ids silently: a file holding its sentinels
  (mT5's layout) gets 0, one without gets T5's 100 appended; gin's extra_ids still wins."""
  monkeypatch.delenv(vocab.MT5_SPM_ENV, raising=False)
  with_sentinels = tasks_testlib.spm_with_sentinels(tmp_path / "with.model")
  without = tmp_path / "without.model"  # the sample model under another name
  without.write_bytes(open(SAMPLE_SPM, "rb").read())
  assert vocab.infer_extra_ids(with_sentinels)[0] == 0
  assert vocab.infer_extra_ids(str(without))[0] == 100
  assert vocab.infer_extra_ids(vocab.MT5_SPM_GCS)[0] == 0  # mT5's own file is not opened
  gin.parse_config(f"tasks.vocab.mt5_vocabulary_config.path = '{without}'")
  v = vocab.mt5_vocabulary()
  assert (v.vocab_size, v.extra_ids) == (500, 100)
  path, extra, how = vocab.mt5_vocabulary_config(describe=True)
  assert (path, extra) == (str(without), 100) and "no sentinels" in how
  gin.parse_config(f"tasks.vocab.mt5_vocabulary_config.path = '{with_sentinels}'")
  assert (v.vocab_size, v.extra_ids) == (500, 0)
  assert v.tokenizer.piece_to_id("<extra_id_0>") == 499
  gin.parse_config("tasks.vocab.mt5_vocabulary_config.extra_ids = 7")
  assert vocab.mt5_vocabulary_config() == (with_sentinels, 7)


def test_checkpoint_folder_vocabulary_and_its_declared_extra_ids(tmp_path, monkeypatch):
  monkeypatch.setenv(vocab.MT5_SPM_ENV, "/env/mt5.model")
  (tmp_path / "spiece.model").write_bytes(open(SAMPLE_SPM, "rb").read())
  (tmp_path / "tokenizer_config.json").write_text('{"extra_ids": 0}')
  assert vocab.declared_extra_ids(str(tmp_path)) == 0
  try:
    vocab.use_checkpoint_vocabulary(str(tmp_path / "spiece.model"),
                                    vocab.declared_extra_ids(str(tmp_path)))
    path, extra, how = vocab.mt5_vocabulary_config(describe=True)
    assert (path, extra) == (str(tmp_path / "spiece.model"), 0)
    assert "the checkpoint's own" in how and "MT5_SPM_PATH is not used" in how
    assert "declared in the folder's tokenizer_config.json" in how
  finally:
    vocab.use_checkpoint_vocabulary(None)
  assert vocab.mt5_vocabulary_config()[0] == "/env/mt5.model"
  (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer"}')
  assert vocab.declared_extra_ids(str(tmp_path)) is None


def test_sample_vocabulary_is_a_gin_reference(clean_gin):
  """--gin.VOCABULARY=@vocab.sample_vocabulary() resolves, to the xp3_sample tasks' vocabulary."""
  import seqio

  from tasks import xp3  # noqa: F401  (registers xp3_sample)
  from xmtf_pipeline import gin_config
  gin.parse_config("from __gin__ import dynamic_registration\nfrom tasks import vocab\n"
                   "VOCABULARY = @vocab.sample_vocabulary()")
  got = gin_config.evaluate("%VOCABULARY")
  want = seqio.get_mixture_or_task("xp3_sample").output_features["targets"].vocabulary
  assert got == want
  assert (got.sentencepiece_model_file, got.extra_ids) == (want.sentencepiece_model_file,
                                                           want.extra_ids)
