"""tasks.mc4: registration, the allenai/c4 JSON layout, hand-computed span corruption, α rates."""

import pytest
import seqio
import tasks_testlib as T
import tensorflow as tf

import gin
import tasks.mc4
from tasks import languages, mixtures

DOCS = ["Which language is this text written in?", "What is the first word?", "Repeat: yes"]


@pytest.fixture
def mc4_env(tmp_path, monkeypatch):
  """MC4_DIR with the allenai/c4 multilingual layout (gzip JSON lines), tiny vocabulary."""
  T.use_tiny_vocab(monkeypatch)
  folder = tmp_path / "multilingual"
  meta = {"timestamp": "2020-01-01T00:00:00Z", "url": "https://example.org"}
  T.write_jsonl(folder / "c4-en.tfrecord-00000-of-00002.json.gz",
                [{"text": DOCS[0], **meta}, {"text": DOCS[1], **meta}])
  T.write_jsonl(folder / "c4-en.tfrecord-00001-of-00002.json.gz", [{"text": DOCS[2], **meta}])
  T.write_jsonl(folder / "c4-en-validation.tfrecord-00000-of-00001.json.gz",
                [{"text": "validation text", **meta}])
  T.write_jsonl(folder / "c4-sw.tfrecord-00000-of-00001.json.gz",
                [{"text": f"habari {i}", **meta} for i in range(10)])
  monkeypatch.setenv("MC4_DIR", str(tmp_path))
  yield tmp_path
  gin.clear_config()


def test_every_mc4_language_is_registered_with_the_tfds_source_untouched(monkeypatch):
  monkeypatch.delenv("MC4_DIR", raising=False)
  for lang in languages.MC4_LANGUAGES:
    task = seqio.get_mixture_or_task(tasks.mc4.task_name(lang))
    assert task.splits == ("train", "validation")
  source = seqio.get_mixture_or_task("mc4_zh_Latn").source._tfds
  assert source.tfds_dataset._name == "c4/multilingual:3.0.1"
  assert source.tfds_dataset._split_map == {"train": "zh-Latn", "validation": "zh-Latn-validation"}
  assert len(seqio.get_mixture_or_task("mc4").tasks) == 107


def _expected(tokens, inputs_length=10, sentinel=499):
  """Hand-computed span corruption for 10-token inputs: every chunk has one forced noise span.

  random_spans_helper(10) = (10 raw tokens, 4 targets); 10 tokens at 15% noise -> 2 noise tokens
  in 1 span after 8 kept ones; a shorter last chunk of r >= 2 tokens -> 1 noise token at its end.
  """
  out = []
  for i in range(0, len(tokens), inputs_length):
    chunk = tokens[i:i + inputs_length]
    k = len(chunk) - (2 if len(chunk) == inputs_length else 1 if len(chunk) > 1 else 0)
    if k == len(chunk):
      out.append((chunk + [1], [1]))
    else:
      out.append((chunk[:k] + [sentinel, 1], [sentinel] + chunk[k:] + [1]))
  return out


def test_span_corruption_task_matches_hand_computed_output(mc4_env):
  task = seqio.get_mixture_or_task("mc4_en")
  vocab = task.output_features["targets"].vocabulary
  # The two train files are interleaved line by line (doc 0, doc 2, doc 1); documents are
  # concatenated without EOS, then cut into 10-token chunks.
  tokens = [t for doc in (DOCS[0], DOCS[2], DOCS[1]) for t in vocab.encode(doc)]
  ds = task.get_dataset({"inputs": 10, "targets": 4}, split="train", shuffle=False, seed=0)
  got = [(x["inputs"].tolist(), x["targets"].tolist()) for x in ds.as_numpy_iterator()]
  assert got == _expected(tokens)
  val = task.get_dataset({"inputs": 10, "targets": 4}, split="validation", shuffle=False, seed=0)
  val_tokens = vocab.encode("validation text")
  assert [(x["inputs"].tolist(), x["targets"].tolist()) for x in val.as_numpy_iterator()] == (
      _expected(val_tokens))


def test_mc4_rates_are_alpha_sampled(mc4_env):
  name = tasks.mc4.register_mc4_mixture("test_mc4_en_sw", ["en", "sw"])
  mix = seqio.get_mixture_or_task(name)
  rates = mixtures.expected_rates(mix)  # documents counted in the local files: 3 and 10
  assert rates["mc4_sw"] / rates["mc4_en"] == pytest.approx((10 / 3) ** 0.3)
  gin.parse_config("tasks.mc4.mc4_rates.example_counts = {'en': 1000, 'sw': 10}\n"
                   "tasks.mc4.mc4_rates.alpha = 0.5")
  rates = mixtures.expected_rates(mix)
  assert rates["mc4_en"] / rates["mc4_sw"] == pytest.approx(10.0)


def test_missing_mc4_data_names_the_setting_and_the_download(tmp_path, monkeypatch):
  T.use_tiny_vocab(monkeypatch)
  monkeypatch.setenv("MC4_DIR", str(tmp_path / "nope"))
  task = seqio.get_mixture_or_task("mc4_en")
  with pytest.raises(tasks.mc4.MC4DataMissingError, match=r"nope.*MC4_DIR.*hf download allenai/c4"):
    task.get_dataset({"inputs": 10, "targets": 4}, shuffle=False)
  monkeypatch.setenv("MC4_DIR", str(tmp_path))
  with pytest.raises(tasks.mc4.MC4DataMissingError, match=r"No mC4 train files for language 'en'"):
    task.get_dataset({"inputs": 10, "targets": 4}, shuffle=False)


def test_malformed_mc4_line_names_file_and_line(tmp_path, monkeypatch):
  T.use_tiny_vocab(monkeypatch)
  T.write_jsonl(tmp_path / "c4-en.tfrecord-00000-of-00001.json.gz",
                ['{"text": "fine"}', '{"txt": "no text field"}'], raw=True)
  monkeypatch.setenv("MC4_DIR", str(tmp_path))
  ds = seqio.get_mixture_or_task("mc4_en").get_dataset({"inputs": 10, "targets": 4}, shuffle=False)
  with pytest.raises(tf.errors.OpError, match=r"c4-en.tfrecord-00000-of-00001.json.gz:2: record "
                     r"has no 'text' field"):
    list(ds.as_numpy_iterator())
