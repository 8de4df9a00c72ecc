"""Bad input: each case is an error naming the file:line / field / setting and the fix."""

import logging

import pytest
import seqio
import tasks_testlib as T
import tensorflow as tf

import gin
import tasks.xp3  # noqa: F401
from tasks import vocab, xp3
from tasks.preprocessors import RecordError
from xmtf_pipeline import input_pipeline

LENGTHS = {"inputs": 32, "targets": 16}


@pytest.fixture
def root(tmp_path, monkeypatch):
  T.use_tiny_vocab(monkeypatch)
  monkeypatch.setenv("XP3_DIR", str(tmp_path))
  yield tmp_path
  gin.clear_config()


def _read(name="xp3_fr", split="train"):
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


def test_missing_root_says_how_to_set_and_download(monkeypatch):
  T.use_tiny_vocab(monkeypatch)
  monkeypatch.delenv("XP3_DIR", raising=False)
  with pytest.raises(xp3.DataMissingError, match=r"xP3 root is not set: export XP3_DIR=.*"
                     r"tasks.xp3.xp3_dir.path.*hf download bigscience/xP3 --repo-type dataset "
                     r"--include 'fr/\*'"):
    _read()
  monkeypatch.setenv("XP3_DIR", "/no/such/xp3")
  with pytest.raises(xp3.DataMissingError, match=r"'/no/such/xp3' .*is not a directory"):
    _read()
  monkeypatch.delenv("XP3MT_DIR", raising=False)
  with pytest.raises(xp3.DataMissingError, match=r"xP3mt root is not set: export XP3MT_DIR"):
    _read("xp3mt_fr")


def test_missing_language_folder_names_it(root):
  T.merged_root(root, {"en": 2})
  with pytest.raises(xp3.DataMissingError, match=r"language folder '.*/fr' is missing.*holds: "
                     r"\['en'\].*--include 'fr/\*' --local-dir"):
    _read()
  (root / "fr").mkdir()
  with pytest.raises(xp3.DataMissingError, match=r"/fr has neither merged_fr.jsonl nor per-prompt"):
    _read()


@pytest.mark.parametrize("line, message", [
    ('{"inputs": "a", "targets": ', r"merged_fr.jsonl:2: malformed JSON"),
    ('{"targets": "b"}', r"merged_fr.jsonl:2: record has no 'inputs' field \(fields: \['targets'\]\)"),
    ('{"inputs": "a"}', r"merged_fr.jsonl:2: record has no 'targets' field"),
    ('{"inputs": "", "targets": "b"}', r"merged_fr.jsonl:2: field 'inputs' is empty"),
    ('{"inputs": "a", "targets": "   "}', r"merged_fr.jsonl:2: field 'targets' is empty"),
    ('{"inputs": 7, "targets": "b"}', r"merged_fr.jsonl:2: field 'inputs' is int .*expected a str"),
    ('{"inputs": "a", "targets": null}', r"merged_fr.jsonl:2: field 'targets' is NoneType"),
    ('{"inputs": "a", "targets": ["b", "c"]}', r"field 'targets' is a list of 2 items"),
    ('["a", "b"]', r"merged_fr.jsonl:2: expected a JSON object"),
])
def test_bad_records_name_file_line_and_field(root, line, message):
  T.write_jsonl(root / "fr" / "merged_fr.jsonl", ['{"inputs": "ok", "targets": "ok"}', line],
                raw=True)
  with pytest.raises(tf.errors.OpError, match=message) as info:
    _read()
  assert "skip_malformed_records.skip = True" in str(info.value)  # says how to skip
  assert input_pipeline.error_summary(info.value).startswith(str(root / "fr" / "merged_fr.jsonl"))


def test_skipping_malformed_lines_is_opt_in_and_counted(root, caplog):
  T.write_jsonl(root / "fr" / "merged_fr.jsonl",
                ['{"inputs": "q0", "targets": "a0"}', "not json", '{"inputs": "q2"}',
                 '{"inputs": "q3", "targets": "a3"}'], raw=True)
  gin.parse_config("tasks.sources.skip_malformed_records.skip = True")
  gin.parse_config("tasks.xp3.validation_holdout.every = 1000")
  task = seqio.get_mixture_or_task("xp3_fr")
  with caplog.at_level(logging.WARNING):
    got = T.texts(task.source.get_dataset("train", shuffle=False))
  assert got == ["q3"]  # line 1 is validation; lines 2 and 3 are skipped, never silently
  assert task.source.skipped_records >= 2
  messages = [r.getMessage() for r in caplog.records]
  assert any("merged_fr.jsonl:2: malformed JSON" in m and "skipped so far" in m for m in messages)
  assert any("merged_fr.jsonl:3: record has no 'targets'" in m for m in messages)


def test_missing_vocabulary_file_names_the_setting(root, monkeypatch):
  T.merged_root(root, {"fr": 3})
  monkeypatch.setenv(vocab.MT5_SPM_ENV, str(root / "missing.model"))
  with pytest.raises(vocab.VocabularyError, match=r"missing.model' does not exist .*MT5_SPM_PATH"):
    _read()


def test_hf_source_errors(root):
  T.write_jsonl(root / "fr" / "merged_fr.jsonl", ['{"inputs": "a", "targets": "b"}', "{oops"],
                raw=True)
  with pytest.raises(RecordError, match=r"HF datasets could not read xP3 fr .*merged_fr.jsonl"):
    _read("xp3_hf_fr")
  T.write_jsonl(root / "sw" / "merged_sw.jsonl", [{"inputs": f"q{i}", "targets": "a"}
                                                  for i in range(3)] + [{"inputs": "q3"}])
  with pytest.raises(tf.errors.OpError, match=r"xP3 sw \(HF datasets\) row 3: record has no "
                     "'targets' field"):
    _read("xp3_hf_sw")


def test_unknown_language_for_per_prompt_tasks(root):
  with pytest.raises(ValueError, match=r"Unknown xP3 language\(s\) \['xx'\]"):
    xp3.register_prompt_tasks("xx")
  with pytest.raises(ValueError, match=r"Unknown dataset family 'xp4'"):
    xp3.register_prompt_tasks("en", "xp4")


def test_unknown_split(root):
  T.merged_root(root, {"fr": 3})
  with pytest.raises(ValueError, match=r"Unknown split 'test'"):
    seqio.get_mixture_or_task("xp3_fr").source.get_dataset("test")
