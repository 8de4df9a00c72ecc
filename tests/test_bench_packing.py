"""``xmtf bench packing`` / ``xmtf bench data``: figures checked against brute-force counts."""

import json
import re

import numpy as np
import pytest

from xmtf_pipeline import cli
from xmtf_pipeline.tools import bench_packing as bp

SMALL = {"inputs": 48, "targets": 8}  # short enough that some sample examples are truncated


@pytest.fixture(scope="module")
def sample():
  examples, vocabulary, _ = bp.task_examples("xp3_sample", 600)
  return examples, vocabulary


def _brute_force(trimmed, lengths, pack):
  rows, real = 0, {"inputs": 0, "targets": 0}
  for b in bp.converted_batches(trimmed, lengths, pack=pack, batch=64):
    rows += len(b["encoder_input_tokens"])
    real["inputs"] += int(np.count_nonzero(b["encoder_input_tokens"]))
    real["targets"] += int(np.count_nonzero(b["decoder_target_tokens"]))
  return rows, real


def test_padding_fractions_equal_a_brute_force_count_over_the_batches(sample):
  examples, vocabulary = sample
  report = bp.packing_report(examples, SMALL, vocabulary.eos_id)
  assert report["length_distribution"]["inputs"]["truncated"] > 0  # trimming is exercised
  trimmed = bp.trim(examples, SMALL, vocabulary.eos_id)
  for key, pack in (("unpacked", False), ("packed", True)):
    rows, real = _brute_force(trimmed, SMALL, pack)
    r = report[key]
    assert r["rows"] == rows
    total = rows * (SMALL["inputs"] + SMALL["targets"])
    assert r["padding_fraction"] == pytest.approx(1 - sum(real.values()) / total, abs=1e-12)
    for f in ("inputs", "targets"):
      assert r[f"padding_fraction_{f}"] == pytest.approx(1 - real[f] / (rows * SMALL[f]),
                                                         abs=1e-12)
  assert report["ratio_analytic"] == pytest.approx(
      report["unpacked"]["rows"] / report["packed"]["rows"])


def test_packed_rows_hold_several_examples_at_mt0_lengths(sample):
  examples, vocabulary = sample
  report = bp.packing_report(examples, {"inputs": 1024, "targets": 1024}, vocabulary.eos_id)
  assert report["unpacked"]["examples_per_row"] == 1
  assert report["packed"]["examples_per_row"] > 1
  assert report["packed"]["padding_fraction"] < report["unpacked"]["padding_fraction"]
  assert report["ratio_analytic"] == pytest.approx(report["packed"]["examples_per_row"])


def test_measured_mode_reports_nonpad_tokens_per_s_for_both(tmp_path, capsys):
  out = tmp_path / "packing.json"
  assert cli.main(["bench", "packing", "--max-examples", "200", "--lengths",
                   "inputs=128,targets=32", "--measure-steps", "2", "--model", "mt5_tiny",
                   "--batch", "2", "--json", str(out)]) == 0
  text = capsys.readouterr().out
  assert "pad total" in text and "measured non-pad tokens/s ratio" in text
  result = json.loads(out.read_text())
  m = result["measured"]
  assert m["model"] == "mt5_tiny" and m["lengths"] == {"inputs": 128, "targets": 32}
  for key in ("unpacked", "packed"):
    assert m[key]["nonpad_tokens_per_s"] > 0 and m[key]["normalizer_equals_examples"]
  assert m["unpacked"]["examples_per_batch"] == 2 and m["packed_examples_per_row"] > 1
  assert m["ratio_measured"] > 1


def test_jsonl_uses_the_sample_vocabulary_without_mt5_spm(tmp_path, monkeypatch, capsys):
  monkeypatch.delenv("MT5_SPM_PATH", raising=False)
  f = tmp_path / "a.jsonl"
  f.write_text('{"inputs": "Repeat: hello world", "targets": "hello world"}\n\n'
               '{"inputs": "Which language? bonjour", "targets": ["French"]}\n')
  assert cli.main(["bench", "packing", "--jsonl", str(f), "--lengths",
                   "inputs=16,targets=16"]) == 0
  text = capsys.readouterr().out
  assert "2 examples" in text and "bundled sample's tiny SentencePiece" in text


@pytest.mark.parametrize("content,match", [
    (None, r"--jsonl {path}: no such file"),
    ('{"inputs": "a", "targets": "b"}\n{"inputs": "a", "targets": \n', r"{path}:2: malformed JSON"),
    ('{"inputs": "a", "targets": "b"}\n\n{"inputs": "a"}\n', r"{path}:3: record has no 'targets'"),
    ("", r"--jsonl {path}: no records"),
])
def test_bad_jsonl_is_an_error_naming_the_file_and_line(tmp_path, capsys, content, match):
  path = tmp_path / "bad.jsonl"
  if content is not None:
    path.write_text(content)
  assert cli.main(["bench", "packing", "--jsonl", str(path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("xmtf bench packing: error: ")
  assert re.search(match.replace("{path}", re.escape(str(path))), err), err
  assert "skip_malformed_records" not in err  # the trainer's gin hint does not apply here


def test_bench_data_prints_examples_per_s_per_core(capsys):
  assert cli.main(["bench", "data", "--examples", "64", "--lengths", "inputs=64,targets=16",
                   "--batch", "4", "--cores", "1", "--gpu-examples-per-s", "10"]) == 0
  text = capsys.readouterr().out
  assert "1 core(s): unpacked" in text and "per core" in text and "cores needed" in text
  result = json.loads(next(line for line in text.splitlines() if line.startswith("JSON:"))[5:])
  for key in ("unpacked", "packed"):
    assert result["pipelines"][key]["examples_per_s_per_core"] > 0
    assert result["pipelines"][key]["cores_needed"] >= 1
  assert result["pipelines"]["packed"]["gpu_examples_per_s"] == pytest.approx(
      10 * result["packed_examples_per_row"])


def test_bad_lengths_and_cores_are_clear_errors(capsys):
  assert cli.main(["bench", "packing", "--lengths", "inputs=64"]) == 2
  assert "needs targets" in capsys.readouterr().err
  assert cli.main(["bench", "data", "--cores", "999"]) == 2
  assert "--cores '999'" in capsys.readouterr().err
