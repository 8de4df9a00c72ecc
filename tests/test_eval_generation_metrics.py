"""Generation metrics: hand-computed values, and `xmtf infer` with METRICS."""

import json

import pytest
from test_eval_cli import _flags, run_dir  # noqa: F401  (the shared trained-run fixture)

from xmtf_pipeline import cli, generation_metrics


def test_identical_outputs_score_100():
  t = ["the cat sat on the mat", "a dog barked"]
  assert generation_metrics.bleu(t, t)["bleu"] == pytest.approx(100.0)
  assert generation_metrics.chrf(t, t)["chrf"] == pytest.approx(100.0)
  assert all(v == pytest.approx(100.0) for v in generation_metrics.rouge(t, t).values())


def test_rouge_by_hand():
  # target unigrams {the, cat, sat}, prediction {the, cat}: P = 1, R = 2/3, F = 0.8;
  # bigrams {the cat, cat sat} vs {the cat}: P = 1, R = 1/2, F = 2/3.
  r = generation_metrics.rouge(["the cat sat"], ["the cat"])
  assert r["rouge1"] == pytest.approx(80.0)
  assert r["rouge2"] == pytest.approx(200 / 3)


def test_bleu_of_disjoint_outputs_is_zero_and_bad_input():
  assert generation_metrics.bleu(["alpha beta gamma delta"], ["one two three four"])["bleu"] == 0
  with pytest.raises(generation_metrics.MetricError, match="2 targets but 1 predictions"):
    generation_metrics.bleu(["a", "b"], ["a"])
  with pytest.raises(generation_metrics.MetricError, match="Unknown metric.*blue"):
    generation_metrics.compute(["blue"], ["a"], ["a"])


def test_infer_writes_metrics(run_dir, tmp_path, capsys):  # noqa: F811
  rows = [{"inputs": "Repeat the following words: la casa", "targets": "la casa"},
          {"inputs": "Repeat the following words: el perro", "targets": "el perro"}]
  src = tmp_path / "gen.jsonl"
  src.write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert cli.main(["infer", *_flags(
      "infer.gin", CHECKPOINT_PATH=f'"{run_dir}/checkpoint_20"', INFER_OUTPUT_DIR=f'"{tmp_path}"',
      INPUT_FILE=f'"{src}"', TASK_FEATURE_LENGTHS="{'inputs': 32, 'targets': 8}", BATCH_SIZE=2,
      METRICS="['bleu', 'chrf', 'rouge']")]) == 0
  scores = json.loads((tmp_path / "gen-metrics.json").read_text())
  assert set(scores) == {"bleu", "chrf", "rouge1", "rouge2", "rougeLsum"}
  assert "metrics: bleu" in capsys.readouterr().out
