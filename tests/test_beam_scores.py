"""Beam-search scores follow T5X's rule (issue 16 item 1), checked on hand-made next-token tables.

T5X's ``decoding.beam_search`` ends with: an example with a finished beam returns only
its finished beams, each scored sum log-prob / ((5 + length) / 6) ** alpha; an example
with none returns its live beams with their raw sum log-probabilities. HF ranks live
beams divided by the same penalty with the finished ones. Both are written out here in
plain Python and compared with ``decoding.beam_search_loop``.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmtf_pipeline import decoding

EOS = 1
V = 6  # 0 pad, 1 EOS, 2..5 content
IMPOSSIBLE = -1e9


def _tables(seed, batch, max_len, eos_shift):
  """Per example: logits T[pos, prev] plus U[prefix sum mod 3] (so not Markov)."""
  rng = np.random.default_rng(seed)
  t = rng.normal(size=(batch, max_len, V, V)) * 1.5
  t[..., 0] = -20.0  # pad is (almost) never chosen
  t[..., EOS] += np.asarray(eos_shift, float)[:, None, None]
  u = rng.normal(size=(batch, 3, V)) * 0.5
  return t.astype(np.float32), u.astype(np.float32)


def _logp(t, u, b, seq):
  """Log-probs of the next token after ``seq`` (tuple of emitted tokens) for example b."""
  prev = seq[-1] if seq else 0
  logits = t[b, len(seq), prev].astype(np.float64) + u[b, sum(seq) % 3]
  logits = logits - logits.max()
  return logits - math.log(np.exp(logits).sum())


def _fn(t, u, batch, k):
  rows = np.repeat(np.arange(batch), k)
  tj, uj = jnp.asarray(t), jnp.asarray(u)

  def tokens_to_logits(cache, prev, pos):
    s = cache["sum"] + prev  # the cache carries the prefix sum; beam_search_loop reorders it
    logits = tj[rows, pos, prev] + uj[rows, s % 3]
    return logits, {"sum": s}

  return tokens_to_logits, {"sum": jnp.zeros((batch * k,), jnp.int32)}


def _penalty(length, alpha):
  return ((5.0 + length) / 6.0) ** alpha


def _reference(t, u, b, max_len, k, alpha, rule):
  """Plain beam search (T5X steps: top 2k candidates, EOS ones finish, best k others live)."""
  live = [((), 0.0)]
  finished = []  # (seq, penalised score)
  for i in range(max_len):
    cands = [(s + (tok,), lp + _logp(t, u, b, s)[tok]) for s, lp in live for tok in range(V)]
    cands = [c for c in cands if c[1] > IMPOSSIBLE]  # a NEG_INF logit never finishes nor lives
    top = sorted(cands, key=lambda c: -c[1])[:2 * k]
    live = [c for c in top if c[0][-1] != EOS][:k]
    finished += [(s, lp / _penalty(i + 1, alpha)) for s, lp in top if s[-1] == EOS]
    finished = sorted(finished, key=lambda c: -c[1])[:k]
  if rule == "t5x":
    if finished:
      return finished + [((), None)] * (k - len(finished))
    return live  # raw log-probs
  ranked = finished + [(s, lp / _penalty(max_len, alpha)) for s, lp in live]
  return sorted(ranked, key=lambda c: -c[1])[:k]


def _run(t, u, max_len, k, alpha, rule):
  batch = t.shape[0]
  fn, cache = _fn(t, u, batch, k)
  run = jax.jit(lambda c: decoding.beam_search_loop(fn, c, batch, max_len, k, alpha, EOS,
                                                    score_rule=rule))
  tokens, scores = run(cache)
  return np.asarray(tokens), np.asarray(scores)


def _trim(row):
  row = list(row)
  return tuple(row[:row.index(EOS) + 1]) if EOS in row else tuple(row)


@pytest.mark.parametrize("rule", ["t5x", "hf"])
def test_beam_search_matches_plain_reference(rule):
  # EOS shifts: impossible / sometimes / often / early, so rows with none, some, all finished.
  # (A merely unlikely EOS still finishes whenever it is among the 2k candidates, as in T5X.)
  shifts = [decoding.NEG_INF, 0.0, 1.5, 3.0, -1.0, 0.5, -30.0]
  max_len, k, alpha = 5, 3, 0.6
  t, u = _tables(0, len(shifts), max_len, shifts)
  tokens, scores = _run(t, u, max_len, k, alpha, rule)
  kinds = set()
  for b in range(len(shifts)):
    ref = _reference(t, u, b, max_len, k, alpha, rule)
    n_fin = sum(1 for s, sc in ref if s and s[-1] == EOS)
    kinds.add("none" if n_fin == 0 else "all" if n_fin == k else "some")
    for j, (seq, score) in enumerate(ref):
      if score is None:  # a slot no finished beam filled
        assert scores[b, j] <= decoding.NEG_INF / 2
        assert not tokens[b, j].any()
        continue
      assert _trim(tokens[b, j]) == seq, (b, j)
      np.testing.assert_allclose(scores[b, j], score, rtol=1e-5, atol=1e-5)
  if rule == "t5x":
    assert kinds == {"none", "some", "all"}, kinds


def test_no_finished_beam_gives_raw_log_probs_of_the_best_sequences():
  """EOS impossible: scores are the k best sums of log-probs over all V^L sequences (beam
  wide enough to be exact: all 16 two-token prefixes stay live), undivided by the brevity
  penalty; HF's rule divides them."""
  max_len, k, alpha = 3, 16, 0.6
  t, u = _tables(1, 2, max_len, [decoding.NEG_INF] * 2)
  t[..., 0] = decoding.NEG_INF
  tokens, scores = _run(t, u, max_len, k, alpha, "t5x")
  _, hf_scores = _run(t, u, max_len, k, alpha, "hf")
  for b in range(2):
    sums = {}
    for seq in itertools.product(range(2, V), repeat=max_len):
      sums[seq] = sum(_logp(t, u, b, seq[:i])[seq[i]] for i in range(max_len))
    best = sorted(sums.items(), key=lambda c: -c[1])[:k]
    for j, (seq, total) in enumerate(best):
      assert tuple(tokens[b, j]) == seq
      np.testing.assert_allclose(scores[b, j], total, rtol=1e-5)
  np.testing.assert_allclose(hf_scores, scores / _penalty(max_len, alpha), rtol=1e-5)


def test_finished_beams_only_even_when_a_live_beam_scores_higher():
  """Hand-made: EOS and 'a EOS' finish, but the 4-token live beam 'b b b b' has a higher
  penalised score. T5X returns only the finished beams (with penalty); HF ranks the live first."""
  max_len, k, alpha = 4, 2, 0.6
  t = np.full((1, max_len, V, V), -20.0, np.float32)
  u = np.zeros((1, 3, V), np.float32)
  # Start: 'a'=2 vs 'b'=3 vs EOS; after 'a': EOS; after 'b': 'b' again with certainty.
  t[0, 0, 0, [2, 3, EOS]] = [np.log(0.35), np.log(0.4), np.log(0.25)]
  t[0, 1:, 2, EOS] = 0.0
  t[0, 1:, 3, 3] = 0.0
  tokens, scores = _run(t, u, max_len, k, alpha, "t5x")
  # Step 1 finishes EOS (0.25, length 1); step 2 finishes 'a EOS' (0.35, length 2).
  fin = [np.log(0.35) / _penalty(2, alpha), np.log(0.25) / _penalty(1, alpha)]
  assert [_trim(r) for r in tokens[0]] == [(2, EOS), (EOS,)]
  np.testing.assert_allclose(scores[0], fin, rtol=1e-4)
  live = np.log(0.4) / _penalty(max_len, alpha)  # 'b b b b' ranks above under HF's rule
  assert live > fin[0]
  tokens, scores = _run(t, u, max_len, k, alpha, "hf")
  assert [_trim(r) for r in tokens[0]] == [(3, 3, 3, 3), (2, EOS)]
  np.testing.assert_allclose(scores[0], [live, fin[0]], rtol=1e-4)


def test_unknown_rule_is_refused():
  fn, cache = _fn(*_tables(0, 1, 2, [0.0]), 1, 2)
  with pytest.raises(ValueError, match="score_rule"):
    decoding.beam_search_loop(fn, cache, 1, 2, 2, 0.6, EOS, score_rule="fairseq")
