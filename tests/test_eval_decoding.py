"""Decoding: greedy vs HF generate, beam search vs exhaustive search, sampling filters, cache."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from eval_testlib import greedy as jit_greedy
from eval_testlib import random_params
from hf_reference import load_hf_model

from xmtf_pipeline import decoding, models
from xmtf_pipeline.network import T5Config, Transformer


def _teacher_forced_scores(config, tree, enc, tokens):
  """Sum log-prob of each (batch, length) token row up to and including EOS, by full recompute."""
  model = models.EncoderDecoderModel(config)
  dec_in = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))
  return np.asarray(model.score_batch(tree, {"encoder_input_tokens": enc,
                                             "decoder_input_tokens": dec_in,
                                             "decoder_target_tokens": tokens}))


@pytest.fixture(scope="module")
def tiny():
  config = T5Config(vocab_size=96, emb_dim=32, num_heads=4, num_encoder_layers=2,
                    num_decoder_layers=3, head_dim=8, mlp_dim=48, dtype="float32")
  return config, Transformer(config), random_params(config, seed=3, logit_scale=4.0)


def _encoder_inputs(rng, vocab, lengths, width):
  enc = np.zeros((len(lengths), width), np.int32)
  for i, n in enumerate(lengths):
    enc[i, :n] = rng.integers(2, vocab, n)
  return enc


def test_greedy_equals_hf_generate(tiny, tmp_path):
  config, module, tree = tiny
  enc = _encoder_inputs(np.random.default_rng(0), config.vocab_size, [9, 4, 12, 7], 12)
  max_len = 16
  ours = np.asarray(jit_greedy(module, tree, enc, max_len))
  hf = load_hf_model(tree, config, str(tmp_path / "hf"))
  with torch.no_grad():
    out = hf.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                      attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                      max_new_tokens=max_len, do_sample=False, num_beams=1,
                      decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
                      use_cache=False).numpy()  # HF sizes its cache by num_layers (2 != 3)
  theirs = np.zeros_like(ours)
  theirs[:, :out.shape[1] - 1] = out[:, 1:]  # HF starts with the decoder start id 0
  np.testing.assert_array_equal(ours, theirs)
  assert (ours == 1).any(), "no row finished: the comparison would not exercise EOS handling"


def _exhaustive(config, module, tree, enc, max_len):
  """Per encoder row, the score of every sequence of <= max_len tokens from ids 1..V-1 that ends
  in EOS, or has max_len non-EOS tokens (unfinished), by full recomputation (one jitted call)."""
  content = list(range(2, config.vocab_size))
  seqs = np.array(list(itertools.product(content, repeat=max_len)), np.int32)
  n = len(seqs)
  all_enc = jnp.asarray(np.repeat(enc, n, 0))
  all_seqs = jnp.asarray(np.tile(seqs, (len(enc), 1)))
  dec_in = jnp.pad(all_seqs[:, :-1], ((0, 0), (1, 0)))
  logits = jax.jit(module.apply)({"params": tree}, all_enc, dec_in, all_seqs)
  logp = np.asarray(jax.nn.log_softmax(logits, -1)).reshape(len(enc), n, max_len, -1)
  out = []
  for e in range(len(enc)):
    lp = logp[e]
    prefix = np.concatenate([np.zeros((n, 1)), np.cumsum(
        np.take_along_axis(lp, seqs[..., None], -1)[..., 0], 1)], 1)
    candidates = {}
    for s, row in enumerate(seqs):
      for t in range(max_len):  # EOS after t content tokens
        candidates[tuple(row[:t]) + (1,)] = prefix[s, t] + lp[s, t, 1]
      candidates[tuple(row)] = prefix[s, max_len]
    out.append(candidates)
  return out


def test_beam_search_finds_the_best_sequence_where_greedy_does_not():
  config = T5Config(vocab_size=8, emb_dim=32, num_heads=4, num_encoder_layers=2,
                    num_decoder_layers=2, head_dim=8, mlp_dim=48, dtype="float32")
  module = Transformer(config)
  tree = random_params(config, seed=2, logit_scale=3.0)
  max_len, beam = 3, 36  # 6 content ids: 36 live prefixes at depth 2 make the search exact
  enc = _encoder_inputs(np.random.default_rng(1), config.vocab_size, [5] * 12, 5)
  # HF's rule ranks finished and unfinished beams together: the best of all candidates.
  search = jax.jit(decoding.beam_search, static_argnums=(0, 3, 4, 5, 6, 7, 8))
  tokens, scores = search(module, tree, jnp.asarray(enc), max_len, beam, 0.0, 1, True, "hf")
  # T5X's rule returns finished beams only (any finished here): every 1- and 2-token
  # sequence ending in EOS was a candidate (1 + 6 live beams of 8 ids < 2k), so the top
  # beam beats all of them.
  t5x_tokens, t5x_scores = search(module, tree, jnp.asarray(enc), max_len, beam, 0.0, 1, True,
                                  "t5x")
  greedy = np.asarray(jit_greedy(module, tree, enc, max_len, forbid_pad=True))
  greedy_wrong = 0
  for i, candidates in enumerate(_exhaustive(config, module, tree, enc, max_len)):
    best = max(candidates, key=candidates.get)
    best_score = candidates[best]
    top = np.asarray(tokens[i, 0])
    top = tuple(top[:list(top).index(1) + 1]) if 1 in top else tuple(top)
    assert top == best
    np.testing.assert_allclose(float(scores[i, 0]), best_score, rtol=1e-5)
    t5x_top = list(np.asarray(t5x_tokens[i, 0]))
    assert 1 in t5x_top
    t5x_top = tuple(t5x_top[:t5x_top.index(1) + 1])
    np.testing.assert_allclose(float(t5x_scores[i, 0]), candidates[t5x_top], rtol=1e-5)
    short = max(v for c, v in candidates.items() if c[-1] == 1 and len(c) <= 2)
    assert float(t5x_scores[i, 0]) >= short - 1e-5
    g = tuple(greedy[i][:list(greedy[i]).index(1) + 1]) if 1 in greedy[i] else tuple(greedy[i])
    if candidates[g] < best_score - 1e-4:
      greedy_wrong += 1
  assert greedy_wrong >= 1, "no input where greedy is suboptimal: the test shows nothing"


def test_beam_scores_equal_full_recomputation(tiny):
  """The cache path (reordered per beam) against teacher-forced scoring of the same beams."""
  config, module, tree = tiny
  enc = _encoder_inputs(np.random.default_rng(2), config.vocab_size, [10, 3, 7], 10)
  alpha, max_len = 0.6, 12
  search = jax.jit(decoding.beam_search, static_argnums=(0, 3, 4, 5, 6, 7, 8))
  # T5X's rule: a row with a finished beam returns only finished beams (penalised), the
  # empty slots at NEG_INF; a row with none returns its live beams' raw log-probabilities.
  tokens, scores = search(module, tree, jnp.asarray(enc), max_len, 4, alpha, 1, False, "t5x")
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  any_finished = (tokens == 1).any(axis=(1, 2))
  for b in range(4):
    recomputed = _teacher_forced_scores(config, tree, jnp.asarray(enc), jnp.asarray(tokens[:, b]))
    finished = (tokens[:, b] == 1).any(axis=1)
    lengths = np.array([list(r).index(1) + 1 if 1 in r else max_len for r in tokens[:, b]])
    filler = any_finished & ~finished
    assert np.all(scores[filler, b] <= decoding.NEG_INF / 2) and not tokens[filler, b].any()
    expected = np.where(finished,
                        recomputed / np.asarray(decoding.brevity_penalty(lengths, alpha)),
                        recomputed)
    np.testing.assert_allclose(scores[~filler, b], expected[~filler], rtol=1e-4, atol=1e-4)
  # HF's rule: finished and unfinished beams ranked together, all penalised.
  tokens, scores = search(module, tree, jnp.asarray(enc), max_len, 4, alpha, 1, False, "hf")
  tokens, scores = np.asarray(tokens), np.asarray(scores)
  assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
  for b in range(4):
    recomputed = _teacher_forced_scores(config, tree, jnp.asarray(enc), jnp.asarray(tokens[:, b]))
    lengths = np.array([list(r).index(1) + 1 if 1 in r else max_len for r in tokens[:, b]])
    expected = recomputed / np.asarray(decoding.brevity_penalty(lengths, alpha))
    np.testing.assert_allclose(scores[:, b], expected, rtol=1e-4, atol=1e-4)
  # The best beam scores at least as well as greedy under the same ranking.
  greedy = np.asarray(jit_greedy(module, tree, enc, max_len))
  g_len = np.array([list(r).index(1) + 1 if 1 in r else max_len for r in greedy])
  g_score = (_teacher_forced_scores(config, tree, jnp.asarray(enc), jnp.asarray(greedy))
             / np.asarray(decoding.brevity_penalty(g_len, alpha)))
  assert np.all(scores[:, 0] >= g_score - 1e-4)


def test_sampling_filters_and_degenerate_cases(tiny):
  config, module, tree = tiny
  enc = jnp.asarray(_encoder_inputs(np.random.default_rng(3), config.vocab_size, [8, 5], 8))
  sample = jax.jit(decoding.sample_decode, static_argnums=(0, 3))  # one compile for all settings
  greedy = np.asarray(jit_greedy(module, tree, enc, 10))
  rng = jax.random.PRNGKey(0)
  for kwargs in ({"top_k": 1}, {"top_p": 1e-6}, {"temperature": 1e-4}):
    args = (kwargs.get("temperature", 1.0), kwargs.get("top_k", 0), kwargs.get("top_p", 1.0))
    tokens, _ = sample(module, tree, enc, 10, rng, *args)
    np.testing.assert_array_equal(np.asarray(tokens), greedy)
  tokens, logp = sample(module, tree, enc, 10, rng, 1.0, 0, 1.0)
  np.testing.assert_allclose(np.asarray(logp),
                             _teacher_forced_scores(config, tree, enc, tokens), rtol=1e-4)
  # top-k / top-p on a known distribution, and sampling frequencies after filtering.
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda f: np.asarray(f > decoding.NEG_INF / 2)[0].tolist()  # noqa: E731
  assert kept(decoding.filter_logits(logits, top_k=2)) == [True, True, False, False]
  assert kept(decoding.filter_logits(logits, top_p=0.7)) == [True, True, False, False]
  assert kept(decoding.filter_logits(logits, top_p=0.81)) == [True, True, True, False]
  draws = jax.random.categorical(jax.random.PRNGKey(1),
                                 decoding.filter_logits(logits, top_k=2)[0], shape=(20000,))
  freq = np.bincount(np.asarray(draws), minlength=4) / 20000
  np.testing.assert_allclose(freq, [0.625, 0.375, 0, 0], atol=0.015)
  hot = decoding.filter_logits(logits, temperature=2.0)
  root = np.sqrt([0.5, 0.3, 0.15, 0.05])  # temperature 2 = square root of the probabilities
  np.testing.assert_allclose(np.asarray(jax.nn.softmax(hot))[0], root / root.sum(), rtol=1e-5)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    decoding.filter_logits(logits, temperature=0.0)


def test_cached_greedy_matches_full_recomputation_with_padding_forbidden(tiny):
  config, module, tree = tiny
  enc = jnp.asarray(_encoder_inputs(np.random.default_rng(4), config.vocab_size, [6, 11], 11))
  out = jit_greedy(module, tree, enc, 20, eos_id=-1, forbid_pad=True)
  assert not np.any(np.asarray(out) == 0)
  dec_in = jnp.pad(out[:, :-1], ((0, 0), (1, 0)))
  logits = module.apply({"params": tree}, enc, dec_in, jnp.ones_like(out))
  np.testing.assert_array_equal(np.asarray(jnp.argmax(logits.at[..., 0].set(-1e10), -1)),
                                np.asarray(out))

