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
  assert evaluation.throughput(out)["examples_per_second"] == pytest.approx(
      8 / sum(r.scoring_seconds for r in out), rel=0.05)
