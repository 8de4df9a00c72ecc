"""mT5's span-corruption objective as small tf.data preprocessors (T5's algorithm, re-written).

``span_corruption`` = select_random_chunk -> reduce_concat_tokens -> split_tokens -> denoise with
``random_spans_noise_mask``; noisy spans become one sentinel each in the inputs, the targets are
sentinel + span pairs. Sentinels count down from ``vocab_size - 1`` (mT5: 250,099 = <extra_id_0>).
EOS is *not* added here: ``seqio.preprocessors.append_eos_after_trim`` follows, and the token
budget from ``random_spans_helper`` leaves room for it, as in T5. Randomness comes from seqio's
``map_over_dataset(num_seeds=...)``, so a Task seed makes the output deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


def random_spans_helper(inputs_length: int, noise_density: float = NOISE_DENSITY,
                        mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                        extra_tokens_per_span_inputs: int = 1,
                        extra_tokens_per_span_targets: int = 1) -> tuple[int, int]:
  """(raw tokens per example, targets length) so the inputs fill ``inputs_length`` with EOS."""
  def lengths(tokens_length):
    num_noise = int(round(tokens_length * noise_density))
    num_nonnoise = tokens_length - num_noise
    num_spans = int(round(num_noise / mean_noise_span_length))
    return (num_nonnoise + num_spans * extra_tokens_per_span_inputs + 1,
            num_noise + num_spans * extra_tokens_per_span_targets + 1)

  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  _, targets_length = lengths(tokens_length)
  if noise_density == 0.5 and targets_length > inputs_length:  # T5's tweak for round numbers
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def random_spans_noise_mask(length, noise_density: float, seeds,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> tf.Tensor:
  """Boolean mask of ``length`` with about ``noise_density`` noise in spans of mean length.

  Noise and non-noise span lengths are random segmentations (``seeds[0]``, ``seeds[1]``); the
  mask always starts with a non-noise span and has at least one noise and one non-noise token.
  """
  if noise_density == 0.0:
    return tf.zeros([length], tf.bool)
  orig_length = length
  length = tf.maximum(length, 2)
  num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
  num_noise = tf.minimum(tf.maximum(num_noise, 1), length - 1)
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32)
  num_spans = tf.maximum(num_spans, 1)
  num_nonnoise = length - num_noise

  def segmentation(num_items, num_segments, seed):
    """Random lengths of ``num_segments`` non-empty segments summing to ``num_items``."""
    first_in_segment = tf.pad(
        seqio.utils.stateless_shuffle(
            tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32), seed), [[1, 0]])
    segment_id = tf.cumsum(first_in_segment)
    return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)

  noise_lengths = segmentation(num_noise, num_spans, seeds[0])
  nonnoise_lengths = segmentation(num_nonnoise, num_spans, seeds[1])
  interleaved = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [num_spans * 2])
  span_starts = tf.cumsum(interleaved)[:-1]
  span_start_indicator = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts,
                                                      length)
  span_num = tf.cumsum(span_start_indicator)
  return tf.equal(span_num % 2, 1)[:orig_length]


def noise_span_to_unique_sentinel(tokens, noise_mask, sentinel_start):
  """Each noise span -> one sentinel (counting down from ``sentinel_start``); rest unchanged."""
  prev_is_noise = tf.pad(noise_mask[:-1], [[1, 0]])
  first_noise = tf.logical_and(noise_mask, tf.logical_not(prev_is_noise))
  subsequent_noise = tf.logical_and(noise_mask, prev_is_noise)
  sentinel = sentinel_start + 1 - tf.cumsum(tf.cast(first_noise, tokens.dtype))
  tokens = tf.where(first_noise, sentinel, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(subsequent_noise))


def nonnoise_span_to_unique_sentinel(tokens, noise_mask, sentinel_start):
  return noise_span_to_unique_sentinel(tokens, tf.logical_not(noise_mask), sentinel_start)


def sentinel_start(vocabulary: seqio.Vocabulary) -> int:
  """Id of the first sentinel (<extra_id_0>): the last id of the vocabulary."""
  return vocabulary.vocab_size - 1


def select_random_chunk(dataset: tf.data.Dataset, max_length: int = 65536,
                        feature_key: str = "targets") -> tf.data.Dataset:
  """A random chunk of at most ``max_length`` tokens of each (non-empty) document."""
  dataset = dataset.filter(lambda x: tf.size(x[feature_key]) > 0)

  @seqio.map_over_dataset(num_seeds=1)
  def chunk(x, seed):
    tokens = x[feature_key]
    n = tf.size(tokens)
    num_segments = tf.cast(tf.math.ceil(n / max_length), tf.int32)
    start = max_length * tf.random.stateless_uniform([], seed, 0, num_segments, dtype=tf.int32)
    return {feature_key: tokens[start:tf.minimum(start + max_length, n)]}

  return chunk(dataset)


def reduce_concat_tokens(dataset: tf.data.Dataset, feature_key: str = "targets",
                         batch_size: int = 128) -> tf.data.Dataset:
  """Concatenates ``batch_size`` consecutive documents (less padding when split later)."""
  dataset = dataset.map(lambda x: {feature_key: x[feature_key]})
  dataset = dataset.padded_batch(batch_size, padded_shapes={feature_key: [-1]})

  def concat(x):
    tokens = tf.reshape(x[feature_key], [-1])
    return {feature_key: tf.boolean_mask(tokens, tf.not_equal(tokens, 0))}

  return dataset.map(concat, num_parallel_calls=tf.data.AUTOTUNE)


def split_tokens(dataset: tf.data.Dataset, max_tokens_per_segment: int,
                 feature_key: str = "targets") -> tf.data.Dataset:
  """Splits each example into consecutive pieces of ``max_tokens_per_segment`` (last shorter)."""
  def split(x):
    tokens = x[feature_key]
    n = tf.size(tokens)
    num_segments = tf.maximum(tf.cast(tf.math.ceil(n / max_tokens_per_segment), tf.int32), 1)
    padded = tf.pad(tokens, [[0, num_segments * max_tokens_per_segment - n]])
    lengths = tf.concat([tf.fill([num_segments - 1], max_tokens_per_segment),
                         [n - (num_segments - 1) * max_tokens_per_segment]], axis=0)
    return tf.data.Dataset.from_tensor_slices(
        (tf.reshape(padded, [num_segments, max_tokens_per_segment]), lengths))

  dataset = dataset.flat_map(split)
  return dataset.map(lambda tokens, n: {feature_key: tokens[:n]})


def denoise(dataset: tf.data.Dataset, vocabulary: seqio.Vocabulary,
            noise_density: float = NOISE_DENSITY,
            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> tf.data.Dataset:
  """``targets`` tokens -> inputs with sentinel-replaced noise spans, targets the spans."""
  start = sentinel_start(vocabulary)

  @seqio.map_over_dataset(num_seeds=2)
  def corrupt(x, seeds):
    tokens = x["targets"]
    mask = random_spans_noise_mask(tf.size(tokens), noise_density, seeds, mean_noise_span_length)
    return {"inputs": noise_span_to_unique_sentinel(tokens, mask, start),
            "targets": nonnoise_span_to_unique_sentinel(tokens, mask, start)}

  return corrupt(dataset)


def span_corruption(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature],
                    noise_density: float = NOISE_DENSITY,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                    merge_examples: bool = True) -> tf.data.Dataset:
  """mT5's pretraining objective; a seqio preprocessor (place after CacheDatasetPlaceholder)."""
  if sequence_length is None or "inputs" not in sequence_length:
    raise ValueError("span_corruption needs sequence_length['inputs'] (TASK_FEATURE_LENGTHS).")
  tokens_length, targets_length = random_spans_helper(
      sequence_length["inputs"], noise_density, mean_noise_span_length)
  if sequence_length.get("targets") is not None and sequence_length["targets"] < targets_length:
    raise ValueError(
        f"span corruption of {sequence_length['inputs']} input tokens makes targets of "
        f"{targets_length} tokens, but TASK_FEATURE_LENGTHS['targets'] is "
        f"{sequence_length['targets']}; raise it to at least {targets_length}.")
  ds = select_random_chunk(dataset)
  if merge_examples:
    ds = reduce_concat_tokens(ds)
  ds = split_tokens(ds, tokens_length)
  return denoise(ds, output_features["targets"].vocabulary, noise_density,
                 mean_noise_span_length)
