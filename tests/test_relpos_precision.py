"""Issue 13, item 1: the relative-position bias's gradient survives bf16 compute.

At 1024/256 every (heads, bucket) cell of the tables sums up to a million per-position
gradients. Gathered from a bf16 table, that sum was a bf16 scatter-add, rounded at
every add: the encoder table's gradient came out 47% off the float32 one. T5X's
one-hot contraction sums in float32; what remains is bf16 rounding of the activations.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmtf_pipeline import layers, models, params
from xmtf_pipeline.tools import bench


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _mt0_like_batch(batch, len_in, len_out, vocab, seed=0):
  """Full rows and padded ones (the padding must not change the comparison)."""
  data = bench.synthetic_batch(batch, len_in, len_out, vocab, seed=seed)
  enc, tgt = data["encoder_input_tokens"], data["decoder_target_tokens"]
  enc[1:, len_in // 3:] = 0
  tgt[1:, len_out // 4:] = 0
  dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], 1)
  return {"encoder_input_tokens": enc, "decoder_target_tokens": tgt,
          "decoder_input_tokens": dec, "decoder_loss_weights": (tgt > 0).astype(np.float32)}


def compute_relpos_grads():
  """Relative-position gradients of the bf16-compute and the float32 model, 1024/256."""
  cfg32 = bench.model_config("mt5_tiny", dtype="float32", dropout=0.0)
  p = params.init_params(cfg32, jax.random.PRNGKey(0))
  batch = {k: jnp.asarray(v) for k, v in _mt0_like_batch(2, 1024, 256, cfg32.vocab_size).items()}
  out = {}
  for dtype in ("float32", "bfloat16"):
    model = models.EncoderDecoderModel(cfg32.replace(dtype=dtype),
                                       loss_normalizing_factor="AVERAGE_PER_SEQUENCE")
    norm, w = model.normalizer_and_weights(batch)
    b = dict(batch, decoder_loss_weights=w)
    with jax.default_matmul_precision("highest" if dtype == "float32" else "default"):
      g = jax.jit(jax.grad(lambda q, m=model, b=b, n=norm: m.loss_fn(q, b, None, n)[0]))(p)
    out[dtype] = {s: np.asarray(g[s]["relpos_bias"]["rel_embedding"]) for s in
                  ("encoder", "decoder")}
  return out


@pytest.fixture(scope="module")
def relpos_grads():
  return compute_relpos_grads()


@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_bf16_relpos_gradient_within_five_percent_of_float32(relpos_grads, stack):
  """Measured: encoder 2.49%, decoder 1.49% with T5X's untruncated attention init (1.29% /
  1.47% with the truncated one); the bf16 scatter-add this guards against gave 44% / 4%, and its
  error grows with the sequence length. What remains is bf16 rounding of the activations."""
  got, want = relpos_grads["bfloat16"][stack], relpos_grads["float32"][stack]
  assert got.dtype == np.float32 and np.abs(want).max() > 0
  assert _rel(got, want) <= 0.05, _rel(got, want)


def test_relpos_bias_values_equal_the_gather_of_the_cast_table():
  """The contraction returns T5X's values exactly: the cast table's entries, in ``dtype``."""
  for dtype in (jnp.float32, jnp.bfloat16):
    mod = layers.RelativePositionBiases(num_heads=3, dtype=dtype)
    v = nn.unbox(mod.init(jax.random.PRNGKey(0), 40, 40, True))
    table = v["params"]["rel_embedding"]
    for bidirectional in (True, False):
      rel = np.arange(40)[None, :] - np.arange(40)[:, None]
      buckets = layers.relative_position_bucket(rel, bidirectional, 32, 128)
      want = np.asarray(jnp.asarray(table, dtype))[:, buckets][None]
      got = mod.apply(v, 40, 40, bidirectional)
      assert got.dtype == dtype
      np.testing.assert_array_equal(np.asarray(got), want)


def test_relpos_gradient_is_a_float32_dot_not_a_scatter():
  """Bucket counts times the cotangent, summed in float32; no scatter in the program."""
  mod = layers.RelativePositionBiases(num_heads=2, dtype=jnp.bfloat16)
  v = nn.unbox(mod.init(jax.random.PRNGKey(0), 300, 300, True))

  def f(p):
    return jnp.sum(mod.apply({"params": p}, 300, 300, True).astype(jnp.float32))

  g = jax.jit(jax.grad(f))(v["params"])["rel_embedding"]
  rel = np.arange(300)[None, :] - np.arange(300)[:, None]
  counts = np.bincount(layers.relative_position_bucket(rel, True, 32, 128).ravel(), minlength=32)
  # A bf16 accumulator stops counting at 256 (adding 1 to 256 rounds back to 256).
  assert counts.max() > 256
  np.testing.assert_array_equal(np.asarray(g), np.broadcast_to(counts, (2, 32)))
  assert "scatter" not in jax.jit(jax.grad(f)).lower(v["params"]).as_text()
