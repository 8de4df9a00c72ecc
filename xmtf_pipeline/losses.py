"""T5X's losses as pure functions (``t5x/losses.py``).

Token losses are cross-entropy plus z-loss, multiplied by loss weights and summed;
``loss_normalizing_factor`` then decides what the sum is divided by.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class SpecialLossNormalizingFactor(enum.Enum):
  NUM_REAL_TARGET_TOKENS = 1
  NUM_TOTAL_TARGET_TOKENS = 2
  AVERAGE_PER_SEQUENCE = 3


NormalizingFactor = float | str | SpecialLossNormalizingFactor | None


def parse_normalizing_factor(value: NormalizingFactor) -> float | SpecialLossNormalizingFactor | None:
  """Accepts None, a number, an enum member or its name (as gin files write it)."""
  if value is None or isinstance(value, SpecialLossNormalizingFactor):
    return value
  if isinstance(value, str):
    try:
      return SpecialLossNormalizingFactor[value]
    except KeyError:
      raise ValueError(
          f"LOSS_NORMALIZING_FACTOR={value!r} is not known; use None, a number, or one of "
          f"{', '.join(m.name for m in SpecialLossNormalizingFactor)}.") from None
  if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
    return float(value)
  raise ValueError(f"LOSS_NORMALIZING_FACTOR must be None, a positive number or a name; "
                   f"got {value!r}.")


def cross_entropy_with_logits(logits: Array, targets: Array, z_loss: float) -> tuple[Array, Array]:
  """Per-token soft-target cross-entropy plus ``z_loss * log(Z)^2``; and the z-loss term.

  Autodiff of this expression gives T5X's custom VJP gradient
  ((1 + 2 z log Z) softmax - targets).
  """
  log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  log_softmax = logits - log_z
  loss = -jnp.sum(targets * log_softmax, axis=-1)
  log_z = jnp.squeeze(log_z, axis=-1)
  total_z_loss = z_loss * jax.lax.square(log_z)
  return loss + total_z_loss, total_z_loss


def token_cross_entropy(logits: Array, targets: Array, label_smoothing: float = 0.0,
                        z_loss: float = 0.0) -> tuple[Array, Array]:
  """Per-token (loss incl. z-loss, z-loss) with T5X's label smoothing and its constant."""
  vocab_size = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = (1.0 - confidence) / (vocab_size - 1)
  normalizing_constant = -(confidence * np.log(confidence)
                           + (vocab_size - 1) * low_confidence * np.log(low_confidence + 1e-20))
  soft_targets = jax.nn.one_hot(targets, vocab_size, dtype=jnp.float32)
  soft_targets = soft_targets * (confidence - low_confidence) + low_confidence
  loss, z = cross_entropy_with_logits(logits.astype(jnp.float32), soft_targets, z_loss)
  return loss - normalizing_constant, z


def _weighted_sums(loss: Array, z: Array, weights: Array | None,
                   loss_normalizing_factor: Array | float | None) -> tuple[Array, Array]:
  if weights is not None:
    loss, z = loss * weights, z * weights
  if loss_normalizing_factor is not None:
    loss, z = loss / loss_normalizing_factor, z / loss_normalizing_factor
  return jnp.sum(loss), jnp.sum(z)


def compute_weighted_cross_entropy(logits: Array, targets: Array, weights: Array | None,
                                   label_smoothing: float = 0.0, z_loss: float = 0.0,
                                   loss_normalizing_factor: Array | float | None = None
                                   ) -> tuple[Array, Array, Array]:
  """(summed loss, summed z-loss, weight sum), each divided by the factor if given."""
  if logits.ndim != targets.ndim + 1:
    raise ValueError(f"Incorrect shapes: logits {logits.shape}, targets {targets.shape}.")
  loss, z = token_cross_entropy(logits, targets, label_smoothing, z_loss)
  weight_sum = np.prod(targets.shape) if weights is None else jnp.sum(weights)
  return (*_weighted_sums(loss, z, weights, loss_normalizing_factor), weight_sum)


def chunked_weighted_cross_entropy(head: Callable[[Array], Array], hidden: Array, targets: Array,
                                   weights: Array | None, chunk_length: int,
                                   label_smoothing: float = 0.0, z_loss: float = 0.0,
                                   loss_normalizing_factor: Array | float | None = None
                                   ) -> tuple[Array, Array, Array]:
  """``compute_weighted_cross_entropy(head(hidden), ...)`` without the full logits.

  ``head`` maps (batch, n, emb) hidden states to float32 (batch, n, vocab) logits.
  A scan over ``chunk_length`` target positions computes each chunk's logits, its
  per-token losses and argmax; ``jax.checkpoint`` makes the backward pass recompute
  the chunk's logits instead of storing them, so peak memory holds one chunk's
  logits. Per-token values are the plain path's and are summed in the same order.
  Returns (summed loss, summed z-loss, argmax token ids).
  """
  batch, length = targets.shape
  n = -(-length // chunk_length)
  pad = n * chunk_length - length
  if pad:  # padded positions are cut off again before the sums
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))

  def chunks(x):  # (batch, n * c, ...) -> (n, batch, c, ...)
    return jnp.moveaxis(x.reshape((batch, n, chunk_length) + x.shape[2:]), 1, 0)

  def unchunk(x):  # (n, batch, c) -> (batch, length)
    return jnp.moveaxis(x, 0, 1).reshape(batch, n * chunk_length)[:, :length]

  @jax.checkpoint
  def body(_, xs):
    h, t = xs
    logits = head(h)
    loss, z = token_cross_entropy(logits, t, label_smoothing, z_loss)
    return None, (loss, z, jnp.argmax(logits, axis=-1))

  _, (loss, z, argmax) = jax.lax.scan(body, None, (chunks(hidden), chunks(targets)))
  return (*_weighted_sums(unchunk(loss), unchunk(z), weights, loss_normalizing_factor),
          unchunk(argmax))


def sum_weights_per_segment(segment_ids: Array, weights: Array) -> Array:
  """For each position, the weight sum of its own packed segment (0 for padding).

  Segments are identified by their id within a row (seqio packing gives each
  example of a row its own id >= 1; id 0 is padding).
  """
  batch, length = segment_ids.shape
  flat_ids = (jnp.arange(batch)[:, None] * (length + 1) + segment_ids).reshape(-1)
  sums = jax.ops.segment_sum(weights.reshape(-1), flat_ids, num_segments=batch * (length + 1))
  per_position = sums[flat_ids].reshape(batch, length)
  return jnp.where(segment_ids > 0, per_position, 0.0)


def get_loss_normalizing_factor_and_weights(loss_normalizing_factor: NormalizingFactor,
                                            batch: Mapping[str, Array]):
  """T5X's rule: returns (divisor or None, loss weights).

  AVERAGE_PER_SEQUENCE divides each weight by its sequence's (or packed segment's)
  weight sum; the divisor is then the number of non-empty sequences.
  """
  factor = parse_normalizing_factor(loss_normalizing_factor)
  weights = batch.get("decoder_loss_weights")
  if not isinstance(factor, SpecialLossNormalizingFactor):
    return factor, weights
  if weights is None:
    weights = jnp.asarray(batch["decoder_target_tokens"] > 0, jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  if factor is SpecialLossNormalizingFactor.NUM_REAL_TARGET_TOKENS:
    return jnp.sum(weights), weights
  if factor is SpecialLossNormalizingFactor.NUM_TOTAL_TARGET_TOKENS:
    return float(np.prod(batch["decoder_target_tokens"].shape)), weights
  if "decoder_segment_ids" in batch and batch["decoder_segment_ids"] is not None:
    norm = sum_weights_per_segment(batch["decoder_segment_ids"], weights)
  else:
    norm = jnp.sum(weights, axis=-1, keepdims=True)
  weights = jnp.where(norm > 0, weights / jnp.where(norm > 0, norm, 1.0), 0.0)
  return jnp.sum(weights), weights
