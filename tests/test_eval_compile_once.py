"""Rank scoring compiles once per shape bucket, shared by every dataset, prompt and scorer of a
model, and the eval summary reports examples/s (issue 17 item 6)."""

import numpy as np
import pytest
from eval_testlib import SAMPLE_VOCAB_CONFIG, random_params, sample_vocabulary

from tasks import heldout
from xmtf_pipeline import evaluation, models
from xmtf_pipeline import rank_classification as rc
from xmtf_pipeline.network import Transformer

# A config no other test uses, so this process has compiled none of its shapes yet.
CONFIG = SAMPLE_VOCAB_CONFIG.replace(mlp_dim=40)


def _dataset(rng, n: int, num_choices: int) -> list[rc.RankExample]:
  """Prompts of 3..12 tokens (buckets 8 and 12), choices of 2..15 tokens ending in EOS."""
  def ids(low, high):
    return rng.integers(2, CONFIG.vocab_size, rng.integers(low, high + 1)).astype(np.int32)
  return [rc.RankExample(ids(3, 12), [np.append(ids(1, 14), rc.EOS_ID).astype(np.int32)
                                      for _ in range(num_choices)], int(rng.integers(num_choices)))
          for _ in range(n)]


def test_one_compilation_per_shape_bucket_across_datasets_and_scorers():
  rng = np.random.default_rng(0)
  datasets = [_dataset(rng, 10, 2), _dataset(rng, 10, 3), _dataset(rng, 10, 2)]
  tree = random_params(CONFIG, seed=3)
  before = rc.TRACES
  scorer = rc.RankScorer(Transformer(CONFIG), tree, batch_size=4)
  # Two "prompts" scored together, then a third dataset alone: one jitted function for all.
  together = rc.rank_classify_many(scorer, datasets[:2])
  third = rc.rank_classify(scorer, datasets[2])
  compiled = rc.TRACES - before
  # 4 rows (batch_size), prompt buckets {8, 12}, 2 or 3 choices, one target bucket (16): at
  # most 4 shapes for the 9 batches, although the choices span 2..15 tokens.
  assert 1 <= compiled <= 2 * 2
  assert scorer.examples == 30 and scorer.seconds > 0

  # Another scorer of the same model (another checkpoint, the next `xmtf eval` entry) with
  # other parameter values compiles nothing new.
  other = rc.RankScorer(Transformer(CONFIG), random_params(CONFIG, seed=4), batch_size=4)
  rc.rank_classify_many(other, datasets[:2])
  other.score(datasets[2])
  assert rc.TRACES - before == compiled
  # Each dataset alone batches differently, but within the same buckets.
  again = rc.RankScorer(Transformer(CONFIG), tree, batch_size=4)
  alone = [again.score(data) for data in datasets[:2]]
  assert rc.TRACES - before <= 2 * 2

  # Scores do not depend on what else shares the batch (padding rows and choices are masked).
  for result, scores, data in zip(together, alone, datasets):
    assert [len(s) for s in result.scores] == [len(ex.choices) for ex in data]
    for a, b in zip(result.scores, scores):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.concatenate(third.scores),
                                np.concatenate(again.score(datasets[2])))


def test_shapes_compile_ahead_in_parallel_and_scoring_then_compiles_nothing():
  """``RankScorer.compile`` finds every shape ``score`` will run (it plans the same batches)
  and compiles them in parallel threads; scoring afterwards traces nothing."""
  rng = np.random.default_rng(1)
  config = CONFIG.replace(mlp_dim=24)  # unused elsewhere: nothing compiled yet
  datasets = [_dataset(rng, 9, 2), _dataset(rng, 7, 3)]
  scorer = rc.RankScorer(Transformer(config), random_params(config, seed=5), batch_size=4)
  shapes = {scorer.batch_shapes([d[i] for i in b]) for d in datasets for b in scorer.plan(d)}
  assert len(shapes) >= 2  # so that the threads have something to share
  before = rc.TRACES
  assert scorer.compile(datasets, threads=2) == len(shapes) == rc.TRACES - before
  assert scorer.shapes_compiled == len(shapes) and scorer.compile_seconds > 0
  assert scorer.compile(datasets) == 0  # compiled once per process
  ahead = [scorer.score(d) for d in datasets]
  assert rc.TRACES - before == len(shapes)
  # A scorer that compiles as it goes gives the same scores (one executable per shape).
  fresh = rc.RankScorer(Transformer(config), scorer.params, batch_size=4)
  for data, scores in zip(datasets, ahead):
    np.testing.assert_array_equal(np.concatenate(fresh.score(data)), np.concatenate(scores))


def test_eval_summary_reports_examples_per_second():
  results = [evaluation.PromptResult("copa", "copa", p, 0.5, 30, seconds=2.0, scoring_seconds=1.5)
             for p in ("a", "b")]
  assert evaluation.throughput(results) == {"examples": 60, "scoring_seconds": 3.0,
                                            "examples_per_second": 20.0}
  assert "20.0 examples/s" in evaluation.throughput_line(results)
  lines = []
  tree = random_params(CONFIG, seed=3)
  out = evaluation.evaluate_suite(models.EncoderDecoderModel(CONFIG), tree, sample_vocabulary(),
                                  "heldout_copa_best_option,heldout_copa_cause_effect",
                                  str(heldout.BUNDLED_DIR), max_examples=4, batch_size=4,
                                  log=lines.append)
  assert [r.num_examples for r in out] == [4, 4] and all(r.scoring_seconds > 0 for r in out)
  assert lines[-1].startswith("Scored 8 examples in ") and "examples/s" in lines[-1]
  assert lines[0].startswith("Compiled ") and "new scoring shapes in" in lines[0], lines
  assert evaluation.throughput(out)["examples_per_second"] == pytest.approx(
      8 / sum(r.scoring_seconds for r in out), rel=0.05)
