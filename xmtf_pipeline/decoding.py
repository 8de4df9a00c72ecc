"""Autoregressive decoding with the incremental key/value cache.

The encoder runs once; each step feeds one token to the decoder, whose
self-attention reads keys and values cached at earlier positions (T5X's
``decode=True`` path).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from xmtf_pipeline.network import Transformer

EOS_ID = 1


def init_cache(module: Transformer, params: Any, encoded: jax.Array, encoder_input_tokens: jax.Array,
               max_length: int) -> Any:
  """Zeroed cache for ``max_length`` decoder positions."""
  dummy = jnp.zeros((encoder_input_tokens.shape[0], max_length), jnp.int32)
  _, variables = module.apply({"params": params}, encoded, encoder_input_tokens, dummy,
                              decode=True, decode_position=None, mutable=["cache"],
                              method=Transformer.decode)
  return jax.tree_util.tree_map(jnp.zeros_like, variables["cache"])


def decode_step(module: Transformer, params: Any, cache: Any, encoded: jax.Array,
                encoder_input_tokens: jax.Array, token: jax.Array, position: jax.Array):
  """Logits (batch, vocab) for one new token at ``position``, and the updated cache."""
  logits, variables = module.apply({"params": params, "cache": cache}, encoded,
                                   encoder_input_tokens, token[:, None], decode=True,
                                   decode_position=position, mutable=["cache"],
                                   method=Transformer.decode)
  return logits[:, 0], variables["cache"]


def greedy_decode(module: Transformer, params: Any, encoder_input_tokens: jax.Array,
                  max_length: int, eos_id: int = EOS_ID) -> jax.Array:
  """Greedy outputs (batch, max_length), padded with 0 after EOS."""
  encoded = module.apply({"params": params}, encoder_input_tokens, method=Transformer.encode)
  cache = init_cache(module, params, encoded, encoder_input_tokens, max_length)
  batch = encoder_input_tokens.shape[0]

  def body(i, carry):
    cache, tokens, prev, done = carry
    logits, cache = decode_step(module, params, cache, encoded, encoder_input_tokens, prev, i)
    nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    nxt = jnp.where(done, 0, nxt)
    tokens = tokens.at[:, i].set(nxt)
    return cache, tokens, nxt, done | (nxt == eos_id)

  tokens = jnp.zeros((batch, max_length), jnp.int32)
  start = jnp.zeros((batch,), jnp.int32)  # decoder start id 0
  done = jnp.zeros((batch,), bool)
  _, tokens, _, _ = jax.lax.fori_loop(0, max_length, body, (cache, tokens, start, done))
  return tokens
