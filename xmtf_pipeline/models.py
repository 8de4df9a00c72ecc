"""The encoder-decoder model: network + loss, as T5X's ``EncoderDecoderModel``.

Pure functions of (params, batch, rng); no run state. Batches carry seqio's
EncDecFeatureConverter features (``encoder_input_tokens``, ``decoder_input_tokens``,
``decoder_target_tokens``, ``decoder_loss_weights`` and, when packed,
``*_segment_ids``/``*_positions``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from xmtf_pipeline import layers, losses
from xmtf_pipeline.network import T5Config, Transformer

Array = jax.Array
Batch = Mapping[str, Array]
PACKING_FEATURES = ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
                    "decoder_positions")


class EncoderDecoderModel:
  """mT5 with T5X's loss: cross-entropy + z-loss, label smoothing, a normalizing factor."""

  def __init__(self, config: T5Config, z_loss: float = 1e-4, label_smoothing: float = 0.0,
               loss_normalizing_factor: losses.NormalizingFactor = None,
               loss_chunk_length: int = 0):
    """``loss_chunk_length`` > 0 computes the LM head and the loss that many target
    positions at a time (rematerialised in the backward pass), so the full float32
    (batch, length, vocab) logits never exist; the loss is the same."""
    self.config = config
    self.module = Transformer(config)
    self.z_loss = z_loss
    self.label_smoothing = label_smoothing
    self.loss_normalizing_factor = losses.parse_normalizing_factor(loss_normalizing_factor)
    if not isinstance(loss_chunk_length, int) or loss_chunk_length < 0:
      raise ValueError(f"loss_chunk_length must be an int >= 0 (0 = off), got "
                       f"{loss_chunk_length!r}.")
    self.loss_chunk_length = loss_chunk_length

  def logits(self, params: Any, batch: Batch, dropout_rng: Array | None = None,
             return_hidden: bool = False, accumulators: Mapping[str, Any] | None = None
             ) -> Array:
    """``accumulators``: the ``fused_accumulation`` collections, for a fused gradient."""
    packing = {k: batch[k] for k in PACKING_FEATURES if batch.get(k) is not None}
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
    return self.module.apply({"params": params, **(accumulators or {})},
                             batch["encoder_input_tokens"],
                             batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                             enable_dropout=dropout_rng is not None, rngs=rngs,
                             return_hidden=return_hidden, **packing)

  def normalizer_and_weights(self, batch: Batch):
    """The divisor and per-token weights for the whole (global) batch."""
    return losses.get_loss_normalizing_factor_and_weights(self.loss_normalizing_factor, batch)

  def loss_fn(self, params: Any, batch: Batch, dropout_rng: Array | None,
              normalizer: Array | float | None,
              accumulators: Mapping[str, Any] | None = None) -> tuple[Array, dict[str, Array]]:
    """Loss of ``batch`` whose ``decoder_loss_weights`` are final, divided by ``normalizer``.

    Returns the loss and summed statistics (additive across microbatches).
    """
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    real = jnp.asarray(targets > 0, jnp.float32)
    if weights is not None:
      real = real * jnp.asarray(weights > 0, jnp.float32)
    if self.loss_chunk_length:
      hidden = self.logits(params, batch, dropout_rng, True, accumulators)
      kernel = params["decoder"]["logits_dense"]["kernel"]
      loss, z_loss, argmax = losses.chunked_weighted_cross_entropy(
          functools.partial(layers.head_logits, kernel=kernel,
                            dtype=jnp.dtype(self.config.head_dtype)),
          hidden, targets, weights, self.loss_chunk_length, self.label_smoothing, self.z_loss,
          normalizer)
    else:
      logits = self.logits(params, batch, dropout_rng, accumulators=accumulators)
      loss, z_loss, _ = losses.compute_weighted_cross_entropy(
          logits, targets, weights, self.label_smoothing, self.z_loss, normalizer)
      argmax = jnp.argmax(logits, axis=-1)
    correct = jnp.asarray(argmax == targets, jnp.float32) * real
    stats = {
        "loss": loss,
        "z_loss": z_loss,
        "correct_tokens": jnp.sum(correct),
        "real_target_tokens": jnp.sum(real),
        # T5X's metric mask is the loss weights it used (normalised under
        # AVERAGE_PER_SEQUENCE); without weights, every target position counts.
        "loss_weight_sum": (jnp.sum(jnp.asarray(weights, jnp.float32)) if weights is not None
                            else jnp.asarray(targets.size, jnp.float32)),
        "total_target_tokens": jnp.asarray(targets.size, jnp.float32),
        "real_input_tokens": jnp.sum(jnp.asarray(batch["encoder_input_tokens"] > 0, jnp.float32)),
        "total_input_tokens": jnp.asarray(batch["encoder_input_tokens"].size, jnp.float32),
    }
    return loss, stats

  def score_batch(self, params: Any, batch: Batch) -> Array:
    """Sum of target-token log-probabilities per example (EOS included, no z-loss)."""
    logits = self.logits(params, batch)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    targets = batch["decoder_target_tokens"]
    token = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    return jnp.sum(token * weights, axis=-1)


def metrics_from_stats(stats: Mapping[str, Any]) -> dict[str, float]:
  """T5X-named scalars from summed statistics (``t5x/models.py`` ``compute_base_metrics``).

  T5X passes the loss weights it trained with as the metric ``mask``, so
  ``loss_per_nonpadding_target_token`` = loss / Σ weights and
  ``non_padding_fraction/loss_weights`` = Σ weights / target positions. Under
  AVERAGE_PER_SEQUENCE the weights are normalised per sequence, so Σ weights is the
  number of (non-empty) sequences, not of tokens. ``loss_per_real_target_token``
  (ours, not a T5X name) divides by the real target tokens instead.
  """
  real = max(float(stats["real_target_tokens"]), 1.0)
  total = max(float(stats["total_target_tokens"]), 1.0)
  loss = float(stats["loss"])
  z = float(stats["z_loss"])
  weight_sum = float(stats.get("loss_weight_sum", stats["real_target_tokens"]))
  return {
      "loss": loss,
      "cross_ent_loss": loss - z,
      "z_loss": z,
      "accuracy": float(stats["correct_tokens"]) / real,
      "loss_per_nonpadding_target_token": loss / weight_sum if weight_sum else float("nan"),
      "loss_per_real_target_token": loss / real,
      "loss_per_all_target_tokens": loss / total,
      "non_padding_fraction/loss_weights": weight_sum / total,
      "non_padding_fraction/decoder": real / total,
      "non_padding_fraction/encoder": (float(stats["real_input_tokens"])
                                       / max(float(stats["total_input_tokens"]), 1.0)),
  }
