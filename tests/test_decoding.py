"""Incremental decoding against full recomputation."""

import jax
import jax.numpy as jnp
import numpy as np

from xmtf_pipeline import decoding, params
from xmtf_pipeline.network import T5Config, Transformer


def test_cached_decode_equals_full_recomputation():
  config = T5Config(vocab_size=64, emb_dim=32, num_heads=4, num_encoder_layers=2,
                    num_decoder_layers=2, head_dim=8, mlp_dim=48, dtype="float32")
  module = Transformer(config)
  tree = params.init_params(config, jax.random.PRNGKey(0))
  # Non-trivial relative-position tables so the decode-time buckets matter.
  rng = np.random.default_rng(0)
  for stack in ("encoder", "decoder"):
    tree[stack]["relpos_bias"]["rel_embedding"] = jnp.asarray(
        rng.standard_normal((4, 32)).astype(np.float32))
  enc = jnp.asarray(rng.integers(2, 64, (3, 11)), jnp.int32).at[1, 6:].set(0)
  max_len = 40  # beyond max_exact, so log-spaced buckets are exercised
  out = decoding.greedy_decode(module, tree, enc, max_len, eos_id=-1)  # never stops
  # Full recomputation: teacher-force the generated prefix and take each argmax.
  dec_in = jnp.concatenate([jnp.zeros((3, 1), jnp.int32), out[:, :-1]], axis=1)
  logits = module.apply({"params": tree}, enc, dec_in, jnp.ones_like(out))
  np.testing.assert_array_equal(np.asarray(jnp.argmax(logits, -1)), np.asarray(out))
  # Logits too, step by step against the cache.
  encoded = module.apply({"params": tree}, enc, method=Transformer.encode)
  cache = decoding.init_cache(module, tree, encoded, enc, max_len)
  for i in range(max_len):
    step_logits, cache = decoding.decode_step(module, tree, cache, encoded, enc, dec_in[:, i], i)
    np.testing.assert_allclose(np.asarray(step_logits), np.asarray(logits[:, i]), rtol=1e-5,
                               atol=1e-5)
