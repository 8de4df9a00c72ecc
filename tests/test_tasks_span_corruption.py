"""tasks.span_corruption: T5's goldens, hand-computed outputs, invariants on fixed seeds."""

import numpy as np
import pytest
import seqio
import tasks_testlib  # noqa: F401  (makes `tasks` importable)
import tensorflow as tf

from tasks import span_corruption as sc


def test_random_spans_helper_goldens():
  # t5/data/preprocessors_test.py goldens, and mT5's 1024 inputs -> 1137 raw tokens, 229 targets.
  assert sc.random_spans_helper(64, 0.20, 2.0, 1, 1) == (70, 22)
  assert sc.random_spans_helper(64, 0.20, 1.0, 1, 1) == (63, 27)
  assert sc.random_spans_helper(1024) == (1137, 229)


def test_noise_mask_with_one_span_is_forced():
  # 10 tokens at 15%: round(1.5) = 2 noise tokens in round(2/3) = 1 span, after 8 non-noise ones.
  for seeds in ([[1, 2], [3, 4]], [[9, 9], [0, 7]]):
    mask = sc.random_spans_noise_mask(10, 0.15, tf.constant(seeds))
    assert mask.numpy().tolist() == [False] * 8 + [True] * 2
  assert sc.random_spans_noise_mask(1, 0.15, tf.constant([[1, 2], [3, 4]])).numpy().tolist() == [
      False]


def test_noise_mask_properties_on_fixed_seeds():
  for s in range(20):
    mask = sc.random_spans_noise_mask(70, 0.15, tf.constant([[s, 1], [s, 2]])).numpy()
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    assert mask.sum() == 10 and len(starts) == 3 and not mask[0]  # round(10.5)=10, round(10/3)
  golden = sc.random_spans_noise_mask(20, 0.3, tf.constant([[1, 2], [3, 4]])).numpy()
  again = sc.random_spans_noise_mask(20, 0.3, tf.constant([[1, 2], [3, 4]])).numpy()
  other = sc.random_spans_noise_mask(20, 0.3, tf.constant([[5, 6], [7, 8]])).numpy()
  assert (golden == again).all() and golden.sum() == 6 and not (golden == other).all()


def test_sentinel_replacement_by_hand():
  tokens = tf.constant([10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
  mask = tf.constant([0, 0, 1, 1, 0, 0, 0, 1, 0, 0]) > 0
  s = 499  # <extra_id_0> of a 500-id vocabulary
  assert sc.noise_span_to_unique_sentinel(tokens, mask, s).numpy().tolist() == [
      10, 11, 499, 14, 15, 16, 498, 18, 19]
  assert sc.nonnoise_span_to_unique_sentinel(tokens, mask, s).numpy().tolist() == [
      499, 12, 13, 498, 17, 497]


def test_split_and_concat_by_hand():
  ds = tf.data.Dataset.from_generator(
      lambda: iter([{"targets": [5, 6, 7]}, {"targets": [8]}, {"targets": [9, 10, 11, 12]}]),
      output_signature={"targets": tf.TensorSpec([None], tf.int32)})
  merged = sc.reduce_concat_tokens(ds, batch_size=128)
  assert [x["targets"].tolist() for x in merged.as_numpy_iterator()] == [
      [5, 6, 7, 8, 9, 10, 11, 12]]
  pieces = sc.split_tokens(merged, 3)
  assert [x["targets"].tolist() for x in pieces.as_numpy_iterator()] == [
      [5, 6, 7], [8, 9, 10], [11, 12]]


def _corrupt(tokens, seed, lengths):
  ds = tf.data.Dataset.from_tensors({"targets": tf.constant(tokens, tf.int32)})
  feature = seqio.Feature(vocabulary=seqio.PassThroughVocabulary(500))
  with seqio.utils.map_seed_manager(seed):
    out = sc.span_corruption(ds, lengths, {"inputs": feature, "targets": feature})
  return [(x["inputs"].tolist(), x["targets"].tolist()) for x in out.as_numpy_iterator()]


def _reconstruct(inputs, targets):
  spans, current = {}, None
  for t in targets:
    if t >= 400:
      current = t
      spans[t] = []
    else:
      spans[current].append(t)
  out = []
  for t in inputs:
    out.extend(spans.get(t, []) if t >= 400 else [t])
  return out


def test_span_corruption_on_fixed_seeds():
  lengths = {"inputs": 64, "targets": 14}  # random_spans_helper(64) = (70, 14)
  tokens = list(range(3, 3 + 150))
  a, b, c = (_corrupt(tokens, seed, lengths) for seed in (7, 7, 8))
  assert a == b and a != c
  chunks = [tokens[i:i + 70] for i in range(0, 150, 70)]
  assert len(a) == len(chunks)
  for (inputs, targets), chunk in zip(a, chunks):
    assert _reconstruct(inputs, targets) == chunk  # nothing lost, nothing invented
    sentinels = [t for t in targets if t >= 400]
    assert sentinels == list(range(499, 499 - len(sentinels), -1))
    if len(chunk) == 70:  # full chunks fill the inputs exactly, leaving room for EOS
      assert len(inputs) == 63 and len(targets) == 13 and len(sentinels) == 3


def test_targets_too_short_is_a_clear_error():
  with pytest.raises(ValueError, match=r"targets of 229 tokens.*raise it to at least 229"):
    _corrupt([3, 4, 5], 1, {"inputs": 1024, "targets": 114})
