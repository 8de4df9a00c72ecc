"""Losses and normalizing factors against brute-force loops over tokens."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmtf_pipeline import losses, schedules

Z = 1e-4


def _token_loss(logits_row, target, z_loss=Z, ls=0.0):
  """-sum_v q_v log p_v + z log(Z)^2 - const, one token, float64."""
  x = np.asarray(logits_row, np.float64)
  log_z = math.log(np.sum(np.exp(x - x.max()))) + x.max()
  V = len(x)
  conf, low = 1.0 - ls, ls / (V - 1)
  q = np.full(V, low)
  q[target] = conf
  const = -(conf * math.log(conf) + (V - 1) * low * math.log(low + 1e-20))
  return -np.sum(q * (x - log_z)) + z_loss * log_z ** 2 - const


def _unpacked_batch(rng):
  targets = np.array([[5, 7, 1, 0, 0, 0], [3, 1, 0, 0, 0, 0], [4, 4, 6, 9, 2, 1]], np.int32)
  logits = rng.standard_normal(targets.shape + (11,)).astype(np.float32) * 3
  return {"decoder_target_tokens": targets}, logits


def _packed_batch(rng):
  targets = np.array([[5, 7, 1, 3, 1, 2, 2, 1, 0], [4, 1, 6, 6, 6, 6, 1, 0, 0]], np.int32)
  seg = np.array([[1, 1, 1, 2, 2, 3, 3, 3, 0], [1, 1, 2, 2, 2, 2, 2, 0, 0]], np.int32)
  pos = np.array([[0, 1, 2, 0, 1, 0, 1, 2, 0], [0, 1, 0, 1, 2, 3, 4, 0, 0]], np.int32)
  logits = rng.standard_normal(targets.shape + (11,)).astype(np.float32) * 3
  return {"decoder_target_tokens": targets, "decoder_segment_ids": seg,
          "decoder_positions": pos}, logits


def _brute(batch, logits, factor):
  t = batch["decoder_target_tokens"]
  seg = batch.get("decoder_segment_ids")

  sequences = {}
  for b in range(t.shape[0]):
    for i in range(t.shape[1]):
      if t[b, i] > 0:
        key = (b, seg[b, i]) if seg is not None else (b,)
        sequences.setdefault(key, []).append(_token_loss(logits[b, i], t[b, i]))
  token_losses = [x for v in sequences.values() for x in v]
  if factor is None:
    return sum(token_losses)
  if factor == "NUM_REAL_TARGET_TOKENS":
    return sum(token_losses) / len(token_losses)
  if factor == "NUM_TOTAL_TARGET_TOKENS":
    return sum(token_losses) / t.size
  if factor == "AVERAGE_PER_SEQUENCE":
    return sum(np.mean(v) for v in sequences.values()) / len(sequences)
  return sum(token_losses) / factor


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("factor", [None, 234_496.0, "NUM_REAL_TARGET_TOKENS",
                                    "NUM_TOTAL_TARGET_TOKENS", "AVERAGE_PER_SEQUENCE"])
def test_loss_normalizing_factors_match_brute_force(factor, packed):
  rng = np.random.default_rng(0)
  batch, logits = (_packed_batch if packed else _unpacked_batch)(rng)
  divisor, weights = losses.get_loss_normalizing_factor_and_weights(
      factor, {k: jnp.asarray(v) for k, v in batch.items()})
  if weights is None:
    weights = jnp.asarray(batch["decoder_target_tokens"] > 0, jnp.float32)
  loss, _, _ = losses.compute_weighted_cross_entropy(
      jnp.asarray(logits), jnp.asarray(batch["decoder_target_tokens"]), weights, 0.0, Z, divisor)
  want = _brute(batch, logits, factor)
  assert float(loss) == pytest.approx(want, rel=1e-5)


def test_average_per_sequence_counts_sequences():
  rng = np.random.default_rng(1)
  batch, _ = _packed_batch(rng)
  divisor, _ = losses.get_loss_normalizing_factor_and_weights(
      "AVERAGE_PER_SEQUENCE", {k: jnp.asarray(v) for k, v in batch.items()})
  assert float(divisor) == pytest.approx(5.0)  # 3 + 2 packed sequences


def test_label_smoothing_and_z_loss_per_token():
  rng = np.random.default_rng(2)
  logits = rng.standard_normal((1, 1, 13)).astype(np.float32) * 2
  for ls in (0.0, 0.1):
    loss, z, _ = losses.compute_weighted_cross_entropy(jnp.asarray(logits), jnp.asarray([[4]]),
                                                       None, ls, Z)
    assert float(loss) == pytest.approx(_token_loss(logits[0, 0], 4, Z, ls), rel=1e-5)
    log_z = float(jax.nn.logsumexp(logits[0, 0]))
    assert float(z) == pytest.approx(Z * log_z ** 2, rel=1e-5)


def test_z_loss_gradient_is_t5x_custom_vjp():
  """d/dlogits = (1 + 2 z log Z) softmax - onehot (T5X's custom VJP)."""
  x = jnp.asarray(np.random.default_rng(3).standard_normal(9).astype(np.float32))
  onehot = jax.nn.one_hot(2, 9)
  g = jax.grad(lambda v: losses.cross_entropy_with_logits(v, onehot, 0.3)[0])(x)
  log_z = jax.nn.logsumexp(x)
  want = (1 + 2 * 0.3 * log_z) * jax.nn.softmax(x) - onehot
  np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-5, atol=1e-7)


def test_bad_normalizing_factor_is_named():
  with pytest.raises(ValueError, match="AVERAGE_PER_SEQENCE.*AVERAGE_PER_SEQUENCE"):
    losses.parse_normalizing_factor("AVERAGE_PER_SEQENCE")


@pytest.mark.parametrize("factors,step,want", [
    ("constant", 5, 1e-3),
    ("constant * rsqrt_decay", 0, 1e-3 / math.sqrt(10_000)),
    ("constant * rsqrt_decay", 1_000_000, 1e-3 / 1000),
    ("constant * linear_warmup", 250, 1e-3 * 0.025),
    ("constant * linear_decay", 10_000 + 25_000, 1e-3 * 0.75),
    ("constant * cosine_decay", 10_000 + 50_000, 1e-3 * 0.5),
])
def test_learning_rate_factors(factors, step, want):
  fn = schedules.create_learning_rate_scheduler(factors, base_learning_rate=1e-3,
                                                warmup_steps=10_000, steps_per_cycle=100_000)
  assert float(fn(step)) == pytest.approx(want, rel=1e-5)


def test_unknown_lr_factor():
  with pytest.raises(ValueError, match="rsqrt_decy"):
    schedules.create_learning_rate_scheduler("constant * rsqrt_decy")
