"""Autoregressive decoding with the incremental key/value cache: greedy, beam, sampling.

The encoder runs once; each step feeds one token to the decoder, whose
self-attention reads keys and values cached at earlier positions (T5X's
``decode=True`` path). Beam search reorders the cache rows to follow their beams.
Decoder start id is 0 and outputs are padded with 0 after EOS, as seqio expects.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from xmtf_pipeline.network import Transformer

EOS_ID = 1
NEG_INF = -1.0e10  # finite "minus infinity": sums and comparisons stay NaN-free


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
                  max_length: int, eos_id: int = EOS_ID, forbid_pad: bool = False) -> jax.Array:
  """Greedy outputs (batch, max_length), padded with 0 after EOS.

  ``forbid_pad`` never emits id 0 (padding); off by default, as in T5X and HF.
  """
  encoded = module.apply({"params": params}, encoder_input_tokens, method=Transformer.encode)
  cache = init_cache(module, params, encoded, encoder_input_tokens, max_length)
  batch = encoder_input_tokens.shape[0]

  def body(i, carry):
    cache, tokens, prev, done = carry
    logits, cache = decode_step(module, params, cache, encoded, encoder_input_tokens, prev, i)
    if forbid_pad:
      logits = logits.at[:, 0].set(NEG_INF)
    nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    nxt = jnp.where(done, 0, nxt)
    tokens = tokens.at[:, i].set(nxt)
    return cache, tokens, nxt, done | (nxt == eos_id)

  tokens = jnp.zeros((batch, max_length), jnp.int32)
  start = jnp.zeros((batch,), jnp.int32)  # decoder start id 0
  done = jnp.zeros((batch,), bool)
  _, tokens, _, _ = jax.lax.fori_loop(0, max_length, body, (cache, tokens, start, done))
  return tokens


def _encode(module: Transformer, params: Any, encoder_input_tokens: jax.Array) -> jax.Array:
  return module.apply({"params": params}, encoder_input_tokens, method=Transformer.encode)


def _log_probs(logits: jax.Array, forbid_pad: bool) -> jax.Array:
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  if forbid_pad:  # id 0 is padding: generating it would end the text silently in seqio's decode
    logp = logp.at[..., 0].set(NEG_INF)
  return logp


def check_sampling_args(temperature: float, top_k: int, top_p: float) -> None:
  """Raises ValueError for settings that cannot sample (Python values, before tracing)."""
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0 for sampling (use greedy for 0), got {temperature}.")
  if top_k < 0 or not 0.0 < top_p <= 1.0:
    raise ValueError(f"Need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}.")


def filter_logits(logits: jax.Array, temperature: float | jax.Array = 1.0,
                  top_k: int | jax.Array = 0, top_p: float | jax.Array = 1.0) -> jax.Array:
  """Logits rescaled by ``temperature`` with everything outside top-k / nucleus top-p masked.

  top-k keeps the k largest (ties at the k-th value are kept too); top-p keeps the
  smallest prefix of the sorted distribution whose mass reaches ``top_p`` (the most
  likely token is always kept). ``top_k=0`` and ``top_p=1.0`` disable each filter.
  All three may be traced values, so one compiled sampler serves every setting.
  """
  if not isinstance(temperature, jax.core.Tracer) and not isinstance(top_k, jax.core.Tracer):
    if isinstance(temperature, int | float) and isinstance(top_p, int | float):
      check_sampling_args(temperature, int(top_k), top_p)
  logits = logits.astype(jnp.float32) / temperature
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  k = jnp.clip(jnp.asarray(top_k, jnp.int32), 0, logits.shape[-1])
  kth = jnp.take_along_axis(sorted_logits, jnp.broadcast_to(jnp.maximum(k - 1, 0),
                                                            logits.shape[:-1] + (1,)), axis=-1)
  kth = jnp.where(k > 0, kth, -jnp.inf)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  # The smallest kept logit: the last sorted position whose preceding mass is < top_p.
  keep = (mass_before < top_p) | (jnp.arange(logits.shape[-1]) == 0)
  cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  cutoff = jnp.where(jnp.asarray(top_p) >= 1.0, -jnp.inf, cutoff)
  return jnp.where(logits < jnp.maximum(kth, cutoff), NEG_INF, logits)


def sample_decode(module: Transformer, params: Any, encoder_input_tokens: jax.Array,
                  max_length: int, rng: jax.Array, temperature: float | jax.Array = 1.0,
                  top_k: int | jax.Array = 0, top_p: float | jax.Array = 1.0, eos_id: int = EOS_ID,
                  forbid_pad: bool = False) -> tuple[jax.Array, jax.Array]:
  """Ancestral sampling with the cache: (tokens (batch, max_length), sum log-prob (batch,)).

  The returned log-probability is the model's (temperature 1, unfiltered) of the
  sampled tokens up to and including EOS, so samples can be ranked or rescored.
  ``temperature``, ``top_k`` and ``top_p`` may be traced (jit them as arguments).
  """
  encoded = _encode(module, params, encoder_input_tokens)
  cache = init_cache(module, params, encoded, encoder_input_tokens, max_length)
  batch = encoder_input_tokens.shape[0]

  def body(i, carry):
    cache, tokens, prev, done, total, rng = carry
    rng, step_rng = jax.random.split(rng)
    logits, cache = decode_step(module, params, cache, encoded, encoder_input_tokens, prev, i)
    logp = _log_probs(logits, forbid_pad)
    filtered = filter_logits(logp, temperature, top_k, top_p)
    nxt = jax.random.categorical(step_rng, filtered, axis=-1).astype(jnp.int32)
    total = total + jnp.where(done, 0.0, jnp.take_along_axis(logp, nxt[:, None], -1)[:, 0])
    nxt = jnp.where(done, 0, nxt)
    tokens = tokens.at[:, i].set(nxt)
    return cache, tokens, nxt, done | (nxt == eos_id), total, rng

  carry = (cache, jnp.zeros((batch, max_length), jnp.int32), jnp.zeros((batch,), jnp.int32),
           jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.float32), rng)
  _, tokens, _, _, total, _ = jax.lax.fori_loop(0, max_length, body, carry)
  return tokens, total


def brevity_penalty(length: jax.Array | int, alpha: float) -> jax.Array:
  """T5X's length penalty ((5 + length) / 6) ** alpha; alpha 0 ranks by plain sum log-prob."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


SCORE_RULES = ("t5x", "hf")


def beam_search(module: Transformer, params: Any, encoder_input_tokens: jax.Array,
                max_length: int, beam_size: int = 4, alpha: float = 0.6, eos_id: int = EOS_ID,
                forbid_pad: bool = False, score_rule: str = "t5x") -> tuple[jax.Array, jax.Array]:
  """Beam search with the cache: (tokens (batch, beam, max_length), scores (batch, beam)).

  Beams come best first (T5X returns them worst first; its best is ``[:, -1]``, ours
  ``[:, 0]``). The encoder runs once per example; the cache rows are reordered to
  follow their beams. The search itself, and what ``score_rule`` selects, is
  :func:`beam_search_loop`.
  """
  if beam_size < 1:
    raise ValueError(f"beam_size must be >= 1, got {beam_size}.")
  k = beam_size
  encoded = _encode(module, params, encoder_input_tokens)
  encoded = jnp.repeat(encoded, k, axis=0)
  enc_tokens = jnp.repeat(encoder_input_tokens, k, axis=0)
  cache = init_cache(module, params, encoded, enc_tokens, max_length)

  def tokens_to_logits(cache, prev, position):
    return decode_step(module, params, cache, encoded, enc_tokens, prev, position)

  return beam_search_loop(tokens_to_logits, cache, encoder_input_tokens.shape[0], max_length,
                          beam_size, alpha, eos_id, forbid_pad, score_rule)


def beam_search_loop(tokens_to_logits: Any, cache: Any, batch: int, max_length: int,
                     beam_size: int = 4, alpha: float = 0.6, eos_id: int = EOS_ID,
                     forbid_pad: bool = False,
                     score_rule: str = "t5x") -> tuple[jax.Array, jax.Array]:
  """Beam search over any next-token function: (tokens (batch, beam, max_length), scores).

  ``tokens_to_logits(cache, prev, position)`` maps the previous token of every beam
  (``batch * beam_size`` rows, beam-major within each example; 0 = decoder start) to
  next-token logits ``(batch * beam_size, vocab)`` and the new cache. Every cache
  array whose leading axis is ``batch * beam_size`` is reordered to follow its beam.

  Each step expands every live beam, keeps the 2k best candidates, sends those ending
  in EOS to the finished set with score ``sum log-prob / brevity_penalty(length,
  alpha)`` and the best k others on (T5X's ``decoding.beam_search``). The loop stops
  after ``max_length`` steps, or once every example has k finished beams and none can
  be beaten by a live beam (bound: best live log-prob / ``brevity_penalty(max_length +
  1)``, T5X's ``beam_search_loop_cond_fn``). What comes back depends on ``score_rule``:

  - ``"t5x"`` (default, T5X's ``beam_search`` end): an example with at least one
    finished beam returns only its finished beams with their penalised scores; slots
    no finished beam filled have score ``NEG_INF`` and tokens 0. An example with no
    finished beam returns its live beams with their raw sum log-probabilities, no
    brevity penalty.
  - ``"hf"`` (HF ``generate``'s rule): live beams that reached ``max_length`` are
    divided by the brevity penalty too and ranked together with the finished ones.
  """
  if score_rule not in SCORE_RULES:
    raise ValueError(f"score_rule must be one of {SCORE_RULES}, got {score_rule!r}.")
  if beam_size < 1:
    raise ValueError(f"beam_size must be >= 1, got {beam_size}.")
  k = beam_size
  # T5X extends max_decode_len by its dummy start token before taking this bound.
  max_penalty = brevity_penalty(max_length + 1, alpha)

  def gather(x, idx):  # x (batch, n, ...), idx (batch, m) -> (batch, m, ...)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

  def cond(state):
    i, _, _, alive_logp, _, fin_score, fin_flag = state
    best_alive = jnp.max(alive_logp, axis=1, keepdims=True) / max_penalty
    worst_fin = jnp.where(fin_flag, jnp.min(fin_score, axis=1, keepdims=True), NEG_INF)
    return (i < max_length) & ~jnp.all(worst_fin > best_alive)

  def body(state):
    i, cache, alive_seq, alive_logp, fin_seq, fin_score, fin_flag = state
    prev = jnp.where(i == 0, 0, jax.lax.dynamic_index_in_dim(alive_seq, jnp.maximum(i - 1, 0), 2,
                                                               keepdims=False))
    logits, cache = tokens_to_logits(cache, prev.reshape(-1), i)
    logp = _log_probs(logits, forbid_pad)
    vocab = logp.shape[-1]
    cand = (alive_logp[:, :, None] + logp.reshape(batch, k, vocab)).reshape(batch, k * vocab)
    cand = jnp.maximum(cand, NEG_INF)  # impossible candidates stay exactly at NEG_INF
    top_scores, top_idx = jax.lax.top_k(cand, 2 * k)
    src_beam, token = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    seqs = gather(alive_seq, src_beam)
    seqs = jax.lax.dynamic_update_index_in_dim(seqs, token, i, axis=2)
    is_eos = token == eos_id
    valid = top_scores > NEG_INF / 2
    live_scores, live_idx = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_scores), k)
    alive_seq, alive_logp = gather(seqs, live_idx), live_scores
    rows = (jnp.arange(batch)[:, None] * k + gather(src_beam, live_idx)).reshape(-1)
    cache = jax.tree_util.tree_map(
        lambda x: x[rows] if x.ndim and x.shape[0] == batch * k else x, cache)
    new_fin = is_eos & valid
    done_scores = jnp.where(new_fin, top_scores / brevity_penalty(i + 1, alpha), NEG_INF)
    fin_score, fin_idx = jax.lax.top_k(jnp.concatenate([fin_score, done_scores], 1), k)
    fin_seq = gather(jnp.concatenate([fin_seq, seqs], 1), fin_idx)
    fin_flag = gather(jnp.concatenate([fin_flag, new_fin], 1), fin_idx)
    return i + 1, cache, alive_seq, alive_logp, fin_seq, fin_score, fin_flag

  alive_logp = jnp.full((batch, k), NEG_INF, jnp.float32).at[:, 0].set(0.0)  # one live beam
  seqs = jnp.zeros((batch, k, max_length), jnp.int32)
  fin_score = jnp.full((batch, k), NEG_INF, jnp.float32)
  fin_flag = jnp.zeros((batch, k), bool)
  state = (jnp.asarray(0), cache, seqs, alive_logp, seqs, fin_score, fin_flag)
  i, _, alive_seq, alive_logp, fin_seq, fin_score, fin_flag = jax.lax.while_loop(
      cond, body, state)
  if score_rule == "t5x":
    any_fin = jnp.any(fin_flag, axis=1)
    scores = jnp.where(any_fin[:, None], jnp.where(fin_flag, fin_score, NEG_INF), alive_logp)
    tokens = jnp.where(any_fin[:, None, None], jnp.where(fin_flag[..., None], fin_seq, 0),
                       alive_seq)
    return tokens, scores
  # HF: live beams that reached max_length compete with the finished ones.
  live = jnp.where(alive_logp > NEG_INF / 2, alive_logp / brevity_penalty(i, alpha), NEG_INF)
  live = jnp.where(i >= max_length, live, NEG_INF)
  scores, idx = jax.lax.top_k(jnp.concatenate([fin_score, live], 1), k)
  tokens = gather(jnp.concatenate([fin_seq, alive_seq], 1), idx)
  return tokens, scores
