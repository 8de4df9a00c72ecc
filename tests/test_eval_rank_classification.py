"""Rank classification: one encoder pass per prompt equals per-pair scoring and HF torch MT5."""

import numpy as np
import pytest
import torch
from eval_testlib import SAMPLE_VOCAB_CONFIG, random_params, sample_vocabulary
from hf_reference import load_hf_model

from tasks import heldout
from xmtf_pipeline import models
from xmtf_pipeline import rank_classification as rc
from xmtf_pipeline.network import Transformer


@pytest.fixture(scope="module")
def setup():
  """Real rows (COPA: 2 choices, CB: 3 choices and long premises, Winogrande) scored together by
  the grouped scorer, with a spy recording the batch size of every traced encoder call."""
  config = SAMPLE_VOCAB_CONFIG
  tree = random_params(config, seed=5)
  vocab = sample_vocabulary()
  examples = []
  for dataset, prompt, n in (("copa", "best_option", 5), ("cb", "GPT-3 style", 4),
                             ("winogrande", "Replace", 3)):
    rows = heldout.load_rows(dataset, heldout.DATASETS[dataset].configs[0],
                             str(heldout.BUNDLED_DIR), max_examples=n)
    for row in rows:
      ex = heldout.render(heldout.get_prompt(dataset, prompt), row)
      examples.append(rc.tokenize_example(vocab, ex.inputs, ex.choices, ex.label, 256, 32))
  encoder_batches = []
  original = Transformer.encode

  def spy(self, encoder_input_tokens, *args, **kwargs):
    encoder_batches.append(encoder_input_tokens.shape[0])
    return original(self, encoder_input_tokens, *args, **kwargs)

  Transformer.encode = spy
  rc._SCORE_FN.clear_cache()  # shared by all scorers: an earlier test may have compiled these
  try:
    grouped = rc.RankScorer(Transformer(config), tree, batch_size=4).score(examples)
  finally:
    Transformer.encode = original
  return config, tree, vocab, examples, grouped, encoder_batches


def test_one_encoder_pass_per_prompt_equals_brute_force_pairs(setup):
  config, tree, _, examples, grouped, encoder_batches = setup
  # Traced encoder inputs had one row per prompt (4 per batch), never one per (prompt, choice).
  assert encoder_batches and all(b <= 4 for b in encoder_batches)
  brute = rc.score_pairs(models.EncoderDecoderModel(config), tree, examples)
  assert [len(g) for g in grouped] == [len(ex.choices) for ex in examples]
  for g, b in zip(grouped, brute):
    np.testing.assert_allclose(g, b, rtol=1e-5, atol=1e-5)
  assert {len(ex.choices) for ex in examples} == {2, 3}  # padded choices were masked out


def test_scores_equal_hf_torch_mt5(setup, tmp_path):
  config, tree, _, examples, ours, _ = setup
  hf = load_hf_model(tree, config, str(tmp_path / "hf"))
  for ex, mine in zip(examples, ours):
    # HF: the prompt without EOS, each choice as labels ending in EOS (-100 = padding).
    n, width = len(ex.choices), max(len(c) for c in ex.choices)
    labels = torch.full((n, width), -100, dtype=torch.long)
    for i, choice in enumerate(ex.choices):
      labels[i, :len(choice)] = torch.tensor(choice)
    with torch.no_grad():
      logits = hf(input_ids=torch.tensor(ex.inputs[None], dtype=torch.long).repeat(n, 1),
                  labels=labels).logits
    logp = torch.log_softmax(logits.float(), -1)
    token = torch.gather(logp, 2, labels.clamp(min=0)[..., None])[..., 0]
    theirs = torch.where(labels >= 0, token, 0.0).sum(-1).numpy()
    np.testing.assert_allclose(mine, theirs, rtol=1e-4)


def test_seqio_evaluator_with_our_score_fn_agrees_with_the_grouped_path(monkeypatch):
  """The registered SeqIO task + seqio.Evaluator + score_fn (T5X's eval route, one row per
  (prompt, choice)) gives the same accuracy as evaluate_suite's one-encoder-pass route."""
  import seqio

  import gin
  from tasks import vocab as vocab_lib
  from xmtf_pipeline import evaluation

  config = SAMPLE_VOCAB_CONFIG
  tree = random_params(config, seed=7)
  model = models.EncoderDecoderModel(config)
  monkeypatch.setenv("XMTF_HELDOUT_DATA_DIR", str(heldout.BUNDLED_DIR))
  monkeypatch.setenv(vocab_lib.MT5_SPM_ENV, str(vocab_lib.SAMPLE_SPM))
  with gin.unlock_config():
    gin.bind_parameter("tasks.heldout.data_config.max_examples", 12)
  try:
    evaluator = seqio.Evaluator("heldout_copa_best_option",
                                seqio.EncDecFeatureConverter(pack=False), use_cached=False)
    metrics, _ = evaluator.evaluate(compute_metrics=True, score_fn=evaluation.seqio_score_fn(
        model, tree, batch_size=8))
    seqio_acc = metrics.result()["heldout_copa_best_option"]["accuracy"]
  finally:
    gin.clear_config()
  (ours,) = evaluation.evaluate_suite(model, tree, sample_vocabulary(), "heldout_copa_best_option",
                                      str(heldout.BUNDLED_DIR), max_examples=12, log=None)
  assert seqio_acc == pytest.approx(100 * ours.accuracy)


def test_protocol_tokenization_truncation_and_argmax(setup):
  vocab = setup[2]
  counts = rc.TruncationCounts()
  ex = rc.tokenize_example(vocab, "Premise text. Question?", ["Yes", "Not at all"], 1, 64, 16,
                           counts=counts)
  assert 1 not in ex.inputs.tolist()  # no EOS on the encoder input
  assert ex.inputs.tolist() == list(vocab.encode("Premise text. Question?"))
  for text, ids in zip(["Yes", "Not at all"], ex.choices):
    assert ids.tolist() == list(vocab.encode(" " + text)) + [1]  # space-prefixed, EOS-terminated
  assert (counts.inputs, counts.targets) == (0, 0)
  long_text = " ".join(f"word{i}" for i in range(200))
  full = list(vocab.encode(long_text))
  right = rc.tokenize_example(vocab, long_text, ["a"], 0, 20, 16, "right", counts)
  left = rc.tokenize_example(vocab, long_text, ["a"], 0, 20, 16, "left", counts)
  assert right.inputs.tolist() == full[:20] and left.inputs.tolist() == full[-20:]
  cut = rc.tokenize_example(vocab, "x", [long_text], 0, 20, 5, counts=counts)
  assert len(cut.choices[0]) == 5 and cut.choices[0][-1] == 1
  assert (counts.inputs, counts.targets) == (2, 1)
  with pytest.raises(rc.RankClassificationError, match="truncate_side"):
    rc.tokenize_example(vocab, "x", ["a"], 0, 8, 8, truncate_side="middle")
  with pytest.raises(rc.RankClassificationError, match="not an index"):
    rc.tokenize_example(vocab, "x", ["a", "b"], 2, 8, 8)

  class Fixed:
    def score(self, examples):
      return [np.array([-1.0, -1.0, -3.0]), np.array([-5.0, -2.0])]

  result = rc.rank_classify(Fixed(), [rc.RankExample(np.array([5]), [np.array([1])] * 3, 0),
                                      rc.RankExample(np.array([5]), [np.array([1])] * 2, 0)])
  assert result.predictions == [0, 1]  # first maximum on ties (torch.argmax)
  assert result.accuracy == 0.5
