"""Fresh parameters are drawn as T5X's mT5 draws them (issue 16 item 3), family by family.

T5X (t5x/examples/t5/layers.py, network.py; the mT5 gins override none of these):
- token_embedder: ``normal(stddev=1.0)`` (network.Transformer.setup);
- attention query/key/value/out: ``MultiHeadDotProductAttention.kernel_init`` =
  ``variance_scaling(1.0, 'fan_in', 'normal')``, untruncated, the query's divided by
  sqrt(head_dim);
- MlpBlock wi_0/wi_1/wo and the untied logits_dense: ``variance_scaling(1.0, 'fan_in',
  'truncated_normal')``, a normal cut at 2 of its standard deviations and rescaled so
  that the std is sqrt(1 / fan_in);
- relpos_bias (heads, buckets): ``variance_scaling(1.0, 'fan_avg', 'uniform')``;
- layer norm scales: ones; no biases.
Kernels are stored (in, out), so fan_in is the first (per layer) dimension.
The expected moments and tail rates are computed here from the normal distribution.
"""

import math

import jax
import numpy as np
import pytest

from xmtf_pipeline import params as params_lib
from xmtf_pipeline.network import T5Config

# mT5-small's widths (heads * head_dim = 384 != emb_dim 512, so fan_in vs fan_out shows).
EMB, HEADS, HEAD_DIM, MLP, VOCAB = 512, 6, 64, 1024, 4096


def _phi(x):  # standard normal CDF
  return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _normal_tail(c):  # P(|Z| > c)
  return 2.0 * (1.0 - _phi(c))


# A standard normal cut to (-2, 2): its std, and the cut in units of that std.
_PDF2 = math.exp(-2.0) / math.sqrt(2.0 * math.pi)
TRUNC_STD = math.sqrt(1.0 - 4.0 * _PDF2 / (1.0 - _normal_tail(2.0)))
TRUNC_BOUND = 2.0 / TRUNC_STD  # ~2.27 standard deviations


def _truncated_tail(c):
  """P(|X| > c std) for the normal cut at TRUNC_BOUND std (rescaled to unit std)."""
  z = c * TRUNC_STD
  return (_normal_tail(z) - _normal_tail(2.0)) / (1.0 - _normal_tail(2.0)) if z < 2 else 0.0


def _families(flat, scanned):
  def pool(pred):
    vals = [np.asarray(v, np.float64).ravel() for p, v in flat.items() if pred(p)]
    assert vals
    return np.concatenate(vals)
  layer = "/layers/" if scanned else "/layers_"
  return {
      "embedding": (pool(lambda p: p == "token_embedder/embedding"), 1.0, "normal"),
      "query": (pool(lambda p: layer in p and p.endswith("query/kernel")),
                1.0 / math.sqrt(EMB) / math.sqrt(HEAD_DIM), "normal"),
      "key": (pool(lambda p: layer in p and p.endswith("key/kernel")), 1.0 / math.sqrt(EMB),
              "normal"),
      "value": (pool(lambda p: layer in p and p.endswith("value/kernel")), 1.0 / math.sqrt(EMB),
                "normal"),
      "out": (pool(lambda p: layer in p and p.endswith("out/kernel")),
              1.0 / math.sqrt(HEADS * HEAD_DIM), "normal"),
      "wi": (pool(lambda p: "/mlp/wi_" in p), 1.0 / math.sqrt(EMB), "truncated"),
      "wo": (pool(lambda p: p.endswith("/mlp/wo/kernel")), 1.0 / math.sqrt(MLP), "truncated"),
      "logits_dense": (pool(lambda p: p == "decoder/logits_dense/kernel"), 1.0 / math.sqrt(EMB),
                       "truncated"),
  }


@pytest.mark.parametrize("scanned", [False, True], ids=["layers", "scanned"])
def test_each_kernel_family_has_t5x_std_and_tails(scanned):
  config = T5Config(vocab_size=VOCAB, emb_dim=EMB, num_heads=HEADS, num_encoder_layers=2,
                    num_decoder_layers=2, head_dim=HEAD_DIM, mlp_dim=MLP, dtype="bfloat16",
                    scan_layers=scanned)
  tree = jax.jit(params_lib.init_params, static_argnums=0)(config, jax.random.PRNGKey(0))
  flat = params_lib.flatten(tree)
  # No biases: every parameter is a kernel, an embedding table or a norm scale.
  assert {p.rsplit("/", 1)[1] for p in flat} == {"kernel", "embedding", "scale",
                                                  "rel_embedding"}
  for path, v in flat.items():
    if path.endswith("/scale"):
      np.testing.assert_array_equal(np.asarray(v), 1.0, err_msg=path)
  for name, (x, std, kind) in _families(flat, scanned).items():
    n = x.size
    assert n > 500_000, name
    assert abs(x.mean()) < 5 * std / math.sqrt(n), name
    assert x.std() == pytest.approx(std, rel=0.01), name
    z = np.abs(x) / std
    for c in (1.0, 2.0, TRUNC_BOUND * 0.98, 3.0):
      expected = _normal_tail(c) if kind == "normal" else _truncated_tail(c)
      tol = 5 * math.sqrt(max(expected, 1.0 / n) / n) + 1e-4
      assert np.mean(z > c) == pytest.approx(expected, abs=tol), (name, c)
    if kind == "normal":  # T5X's untruncated kernels exceed the cut a truncated one keeps
      assert np.mean(z > TRUNC_BOUND) == pytest.approx(_normal_tail(TRUNC_BOUND), rel=0.1), name
      assert z.max() > 1.3 * TRUNC_BOUND, name
    else:
      assert z.max() <= TRUNC_BOUND * (1 + 1e-5), name


def test_relative_position_tables_are_uniform_fan_avg():
  """(heads, buckets) tables, many seeds: uniform on +-sqrt(3 / ((heads + buckets) / 2))."""
  heads, buckets = 6, 32
  config = T5Config(vocab_size=8, emb_dim=8, num_heads=heads, num_encoder_layers=1,
                    num_decoder_layers=1, head_dim=4, mlp_dim=8, dtype="float32")
  init = jax.jit(jax.vmap(lambda k: params_lib.init_params(config, k)))
  tree = init(jax.random.split(jax.random.PRNGKey(0), 128))
  flat = params_lib.flatten(tree)
  x = np.concatenate([np.asarray(flat[f"{s}/relpos_bias/rel_embedding"]).ravel()
                      for s in ("encoder", "decoder")])
  assert x.size == 2 * 128 * heads * buckets
  limit = math.sqrt(3.0 / ((heads + buckets) / 2.0))
  assert np.abs(x).max() <= limit
  assert x.std() == pytest.approx(limit / math.sqrt(3.0), rel=0.02)
  assert abs(x.mean()) < 5 * limit / math.sqrt(3.0 * x.size)
  for q in (0.25, 0.5, 0.9):  # flat: P(|x| > q * limit) = 1 - q
    assert np.mean(np.abs(x) > q * limit) == pytest.approx(1 - q, abs=0.01)
