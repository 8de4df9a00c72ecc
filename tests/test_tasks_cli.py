"""``xmtf data`` (xmtf_pipeline/tools/data_inspect.py): examples, statistics, rates, errors."""

import pytest
import tasks_testlib as T

import gin
from xmtf_pipeline import cli
from xmtf_pipeline.tools import data_inspect


def test_data_is_a_subcommand():
  assert "data" in cli.build_parser().format_help()


def test_examples_statistics_and_rates_on_the_sample(capsys):
  rc = cli.main(["data", "xp3_sample", "-n", "2", "--stats", "400",
                 "--feature_lengths", "inputs=64,targets=16", "--seed", "1"])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert "mixture xp3_sample: 12 task(s)" in out and "--- example 1" in out
  assert "inputs (" in out and "targets (" in out and "  ids: " in out
  assert "statistics over 400 examples, feature lengths {'inputs': 64, 'targets': 16}" in out
  for column in ("p50", "p90", "p99", "truncated", "pad(unpacked)", "pad(packed)"):
    assert column in out
  assert "packing: 400 examples ->" in out
  assert "mixture rates over 400 sampled examples" in out and "xp3_sample_code" in out


def test_task_validation_split(capsys):
  rc = cli.main(["data", "xp3_sample_zh", "--split", "validation", "-n", "1", "--stats", "3",
                 "--feature_lengths", "{'inputs': 128, 'targets': 32}"])
  out = capsys.readouterr().out
  assert rc == 0 and "task xp3_sample_zh" in out and "mixture rates" not in out


def test_length_statistics_by_hand():
  examples = [{"inputs": [5, 6, 7], "targets": [9]}, {"inputs": [5] * 5, "targets": [9]},
              {"inputs": [5] * 12, "targets": [9, 9, 9]}]
  stats = data_inspect.length_stats(examples, {"inputs": 8, "targets": 2})
  assert stats["inputs"]["max"] == 12 and stats["inputs"]["p50"] == 5
  assert stats["inputs"]["truncated"] == pytest.approx(1 / 3)
  assert stats["targets"]["truncated"] == pytest.approx(1 / 3)
  # Unpacked rows: 3 + 5 + 8 of 3 x 8 input slots, 1 + 1 + 2 of 3 x 2 target slots.
  assert stats["inputs"]["pad_unpacked"] == pytest.approx(1 - 16 / 24)
  assert stats["targets"]["pad_unpacked"] == pytest.approx(1 - 4 / 6)
  # Packed: examples 1 and 2 share a row (3 + 5 inputs, 1 + 1 targets), example 3 is alone.
  assert stats["_packing"]["packed_rows"] == 2
  assert stats["inputs"]["pad_packed"] == pytest.approx(1 - 16 / 16)
  assert stats["targets"]["pad_packed"] == pytest.approx(1 - 4 / 4)


@pytest.mark.parametrize("argv, message", [
    (["data", "no_such_mixture"], "no_such_mixture"),
    (["data", "xp3_sample", "--feature_lengths", "inputs:12"], "--feature_lengths 'inputs:12'"),
    (["data", "xp3_sample", "--feature_lengths", "inputs=0"], "positive integer"),
])
def test_bad_arguments_are_reported(capsys, argv, message):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("xmtf data: error: ") and message in err


@pytest.fixture
def clean_gin():
  yield
  gin.clear_config()


def test_malformed_data_is_reported_with_file_and_line(tmp_path, capsys, monkeypatch, clean_gin):
  T.use_tiny_vocab(monkeypatch)
  T.write_jsonl(tmp_path / "en" / "merged_en.jsonl",
                ['{"inputs": "a", "targets": "b"}', '{"inputs": "a", "targets": "b"}', "{broken"],
                raw=True)
  monkeypatch.delenv("XP3_DIR", raising=False)
  rc = cli.main(["data", "xp3_en", "--no_shuffle", "--gin_bindings",
                 f"tasks.xp3.xp3_dir.path = '{tmp_path}'"])
  err = capsys.readouterr().err
  assert rc == 2
  assert f"{tmp_path}/en/merged_en.jsonl:3: malformed JSON" in err and "Traceback" not in err
