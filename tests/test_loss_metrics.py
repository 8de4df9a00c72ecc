"""loss_per_nonpadding_target_token as T5X reports it (issue 16 item 4).

``t5x/models.py`` ``loss_fn`` hands the loss weights it trained with to
``compute_base_metrics`` as ``mask``; there ``loss_per_nonpadding_target_token`` is
``Average(total=loss, count=sum(mask))``. Under AVERAGE_PER_SEQUENCE the weights are
normalised per sequence, so the count is the number of sequences. The weights and the
loss are written out here in numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval_testlib import random_params

from xmtf_pipeline import models, trainer
from xmtf_pipeline.network import T5Config

Z_LOSS = 1e-4
CONFIG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, num_encoder_layers=1,
                  num_decoder_layers=1, head_dim=8, mlp_dim=32, dtype="float32")


def _batch(target_lengths, width=8):
  rng = np.random.default_rng(0)
  n = len(target_lengths)
  targets = np.zeros((n, width), np.int32)
  for i, length in enumerate(target_lengths):
    targets[i, :length] = rng.integers(2, CONFIG.vocab_size, length)
    targets[i, length - 1] = 1
  enc = rng.integers(2, CONFIG.vocab_size, (n, 6)).astype(np.int32)
  return {"encoder_input_tokens": enc,
          "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
          "decoder_target_tokens": targets,
          "decoder_loss_weights": (targets > 0).astype(np.float32)}


def _numpy_loss(logits, targets, weights):
  """T5X's weighted cross-entropy + z-loss, divided by the weight sum (the divisor of both
  AVERAGE_PER_SEQUENCE and NUM_REAL_TARGET_TOKENS)."""
  logits = np.asarray(logits, np.float64)
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  nll = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  per_token = nll + Z_LOSS * lse ** 2
  return float((per_token * weights).sum() / weights.sum())


@pytest.mark.parametrize("factor", ["AVERAGE_PER_SEQUENCE", "NUM_REAL_TARGET_TOKENS"])
def test_loss_per_nonpadding_target_token_divides_by_the_loss_weight_sum(factor):
  lengths = [3, 8, 4, 6]  # 4 sequences, 21 real target tokens
  batch = _batch(lengths)
  model = models.EncoderDecoderModel(CONFIG, z_loss=Z_LOSS, loss_normalizing_factor=factor)
  params = random_params(CONFIG, seed=0)
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  stats = jax.device_get(jax.jit(lambda p, b: trainer.eval_step(model, p, b))(params, jb))
  metrics = models.metrics_from_stats(stats)

  raw = batch["decoder_loss_weights"]
  if factor == "AVERAGE_PER_SEQUENCE":
    weights = raw / raw.sum(axis=1, keepdims=True)  # each sequence's weights sum to 1
    expected_count = 4.0
  else:
    weights = raw
    expected_count = 21.0
  assert weights.sum() == pytest.approx(expected_count)
  logits = model.logits(params, jb)
  loss = _numpy_loss(logits, batch["decoder_target_tokens"], weights)
  assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
  assert metrics["loss_per_nonpadding_target_token"] == pytest.approx(loss / expected_count,
                                                                      rel=1e-5)
  assert metrics["loss_per_real_target_token"] == pytest.approx(loss / 21.0, rel=1e-5)
  assert metrics["loss_per_all_target_tokens"] == pytest.approx(loss / 32.0, rel=1e-5)
  assert metrics["non_padding_fraction/loss_weights"] == pytest.approx(expected_count / 32.0)
  assert metrics["non_padding_fraction/decoder"] == pytest.approx(21.0 / 32.0)


def test_packed_rows_count_each_segment_once():
  """Packed: T5X normalises per segment, so the weight sum is the number of segments."""
  batch = _batch([5, 8, 7])
  seg = np.array([[1, 1, 1, 2, 2, 0, 0, 0],  # two examples (3 + 2 tokens), padding
                  [1, 1, 1, 1, 1, 1, 1, 1],
                  [1, 1, 2, 2, 2, 3, 3, 0]], np.int32)
  pos = np.array([[0, 1, 2, 0, 1, 0, 0, 0],
                  [0, 1, 2, 3, 4, 5, 6, 7],
                  [0, 1, 0, 1, 2, 0, 1, 0]], np.int32)
  batch["decoder_target_tokens"] = np.where(seg > 0, np.maximum(batch["decoder_target_tokens"], 2),
                                            0).astype(np.int32)
  batch["decoder_loss_weights"] = (seg > 0).astype(np.float32)
  batch.update(decoder_segment_ids=seg, decoder_positions=pos,
               encoder_segment_ids=np.where(batch["encoder_input_tokens"] > 0, 1, 0),
               encoder_positions=np.tile(np.arange(6, dtype=np.int32), (3, 1)))
  model = models.EncoderDecoderModel(CONFIG, z_loss=Z_LOSS,
                                     loss_normalizing_factor="AVERAGE_PER_SEQUENCE")
  params = random_params(CONFIG, seed=1)
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  stats = jax.device_get(jax.jit(lambda p, b: trainer.eval_step(model, p, b))(params, jb))
  metrics = models.metrics_from_stats(stats)
  weights = np.zeros_like(batch["decoder_loss_weights"])
  for r in range(3):
    for s in set(seg[r]) - {0}:
      weights[r, seg[r] == s] = 1.0 / (seg[r] == s).sum()
  assert weights.sum() == pytest.approx(6.0)
  loss = _numpy_loss(model.logits(params, jb), batch["decoder_target_tokens"], weights)
  assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
  assert metrics["loss_per_nonpadding_target_token"] == pytest.approx(loss / 6.0, rel=1e-5)
  assert float(stats["loss_weight_sum"]) == pytest.approx(6.0)


def test_microbatches_and_steps_add_up():
  """Summed over microbatches (and over logged steps), the count is still the weight sum."""
  batch = {k: jnp.asarray(v) for k, v in _batch([3, 8, 4, 6]).items()}
  model = models.EncoderDecoderModel(CONFIG, z_loss=Z_LOSS,
                                     loss_normalizing_factor="AVERAGE_PER_SEQUENCE")
  params = random_params(CONFIG, seed=2)
  one, two = (jax.jit(lambda p, b, n=n: trainer.compute_gradients(model, p, b, None, n)[1])(
      params, batch) for n in (1, 2))
  assert float(one["loss_weight_sum"]) == pytest.approx(4.0)
  assert float(two["loss_weight_sum"]) == pytest.approx(4.0)
  steps = {k: np.asarray(one[k], np.float64) * 3 for k in one}  # three equal steps
  metrics = models.metrics_from_stats(steps)
  assert metrics["loss_per_nonpadding_target_token"] == pytest.approx(
      float(one["loss"]) / 4.0, rel=1e-6)
