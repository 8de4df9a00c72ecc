"""The T5.1.1 / mT5 encoder-decoder as a pure flax module over one frozen config.

Parameter names and shapes follow T5X's ``t5x/examples/t5/network.py`` tree
exactly, so T5X checkpoints and HF weights (via ``hf_mapping``) load directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmtf_pipeline import axes, layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture and numerics of one model; no run state."""
  vocab_size: int = 250112
  emb_dim: int = 512
  num_heads: int = 6
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  head_dim: int = 64
  mlp_dim: int = 1024
  dropout_rate: float = 0.0
  dtype: str = "bfloat16"
  relpos_num_buckets: int = 32
  relpos_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  float32_attention_logits: bool = False

  def __post_init__(self):
    for field in ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers",
                  "num_decoder_layers", "head_dim", "mlp_dim"):
      value = getattr(self, field)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"T5Config.{field} must be a positive int, got {value!r}.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate}.")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"T5Config.dtype must be float32 or bfloat16, got {self.dtype!r}.")

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  def replace(self, **changes) -> T5Config:
    return dataclasses.replace(self, **changes)


def _dropout(rate: float, x: Array, deterministic: bool, broadcast: bool = True) -> Array:
  dims = (-2,) if broadcast else ()
  return nn.Dropout(rate=rate, broadcast_dims=dims)(x, deterministic=deterministic)


class EncoderLayer(nn.Module):
  config: T5Config
  relative_embedding: nn.Module

  @nn.compact
  def __call__(self, inputs: Array, mask: Array | None, deterministic: bool) -> Array:
    cfg = self.config
    dt = cfg.compute_dtype
    length = inputs.shape[-2]
    bias = self.relative_embedding(length, length, bidirectional=True)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_attention_layer_norm")(inputs)
    x = layers.MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt,
                                  cfg.float32_attention_logits, name="attention")(
                                      x, x, mask, bias, deterministic)
    x = _dropout(cfg.dropout_rate, x, deterministic) + inputs
    y = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_mlp_layer_norm")(x)
    y = layers.MlpBlock(cfg.mlp_dim, cfg.dropout_rate, dt, name="mlp")(y, deterministic)
    y = _dropout(cfg.dropout_rate, y, deterministic) + x
    return layers.constrain(y, (axes.BATCH, axes.LENGTH, axes.EMBED))


class DecoderLayer(nn.Module):
  config: T5Config
  relative_embedding: nn.Module

  @nn.compact
  def __call__(self, inputs: Array, encoded: Array, self_mask: Array | None,
               cross_mask: Array | None, deterministic: bool, decode: bool = False,
               decode_position: Array | None = None) -> Array:
    cfg = self.config
    dt = cfg.compute_dtype
    if decode and decode_position is not None:
      max_len = self._cache_length(inputs)
      bias = self.relative_embedding(1, max_len, bidirectional=False,
                                     query_offset=decode_position)
    else:  # full sequence, or the call that allocates the decode cache
      length = inputs.shape[-2]
      bias = self.relative_embedding(length, length, bidirectional=False)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_self_attention_layer_norm")(inputs)
    x = layers.MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt,
                                  cfg.float32_attention_logits, name="self_attention")(
                                      x, x, self_mask, bias, deterministic, decode=decode)
    x = _dropout(cfg.dropout_rate, x, deterministic) + inputs
    y = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_cross_attention_layer_norm")(x)
    y = layers.MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt,
                                  cfg.float32_attention_logits, name="encoder_decoder_attention")(
                                      y, encoded, cross_mask, None, deterministic)
    y = _dropout(cfg.dropout_rate, y, deterministic) + x
    z = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_mlp_layer_norm")(y)
    z = layers.MlpBlock(cfg.mlp_dim, cfg.dropout_rate, dt, name="mlp")(z, deterministic)
    z = _dropout(cfg.dropout_rate, z, deterministic) + y
    return layers.constrain(z, (axes.BATCH, axes.LENGTH, axes.EMBED))

  def _cache_length(self, inputs: Array) -> int:
    if self.has_variable("cache", "self_attention"):
      cache = self.variables["cache"]["self_attention"]
      return cache["cached_key"].shape[1]
    return inputs.shape[-2]


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, mask: Array | None, deterministic: bool) -> Array:
    cfg = self.config
    rel_emb = layers.RelativePositionBiases(cfg.num_heads, cfg.relpos_num_buckets,
                                            cfg.relpos_max_distance, cfg.compute_dtype,
                                            name="relpos_bias")
    x = self.shared_embedding(tokens)
    x = _dropout(cfg.dropout_rate, x, deterministic).astype(cfg.compute_dtype)
    x = layers.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, rel_emb, name=f"layers_{i}")(x, mask, deterministic)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="encoder_norm")(x)
    # After the final norm the encoder drops elementwise (T5X), the decoder broadcast.
    return _dropout(cfg.dropout_rate, x, deterministic, broadcast=False)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, decoder_input_tokens: Array, self_mask: Array | None,
               cross_mask: Array | None, deterministic: bool, decode: bool = False,
               decode_position: Array | None = None) -> Array:
    cfg = self.config
    rel_emb = layers.RelativePositionBiases(cfg.num_heads, cfg.relpos_num_buckets,
                                            cfg.relpos_max_distance, cfg.compute_dtype,
                                            name="relpos_bias")
    y = self.shared_embedding(decoder_input_tokens)
    y = _dropout(cfg.dropout_rate, y, deterministic).astype(cfg.compute_dtype)
    y = layers.constrain(y, (axes.BATCH, axes.LENGTH, axes.EMBED))
    for i in range(cfg.num_decoder_layers):
      y = DecoderLayer(cfg, rel_emb, name=f"layers_{i}")(
          y, encoded, self_mask, cross_mask, deterministic, decode, decode_position)
    y = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="decoder_norm")(y)
    y = _dropout(cfg.dropout_rate, y, deterministic)
    # Untied output projection in float32, no rescale (mT5: logits_via_embedding=False).
    logits = layers.DenseGeneral(cfg.vocab_size, kernel_axes=(axes.EMBED, axes.VOCAB),
                                 dtype=jnp.float32, name="logits_dense")(y)
    return layers.constrain(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))


class Transformer(nn.Module):
  """mT5 encoder-decoder. Inputs follow seqio's EncDecFeatureConverter features."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = layers.Embed(cfg.vocab_size, cfg.emb_dim, cfg.compute_dtype,
                                       name="token_embedder")
    self.encoder = Encoder(cfg, self.token_embedder, name="encoder")
    self.decoder = Decoder(cfg, self.token_embedder, name="decoder")

  def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
             enable_dropout: bool = False) -> Array:
    valid = encoder_input_tokens > 0
    mask = layers.attention_mask(valid, valid)
    if encoder_segment_ids is not None:
      mask = layers.combine_masks(
          mask, layers.attention_mask(encoder_segment_ids, encoder_segment_ids, jnp.equal))
    return self.encoder(encoder_input_tokens, mask, deterministic=not enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Array | None = None,
             encoder_segment_ids: Array | None = None, decoder_segment_ids: Array | None = None,
             enable_dropout: bool = False, decode: bool = False,
             decode_position: Array | None = None) -> Array:
    """Decoder logits (float32). With ``decode=True``, one step against the cache.

    In full mode the masks come from ``decoder_target_tokens`` (id 0 is
    padding); in decode mode the self-attention mask comes from the cache, and
    ``decode_position=None`` marks the call that allocates the cache for
    ``decoder_input_tokens.shape[1]`` positions.
    """
    enc_valid = encoder_input_tokens > 0
    if decode:
      self_mask = None
      dec_valid = jnp.ones_like(decoder_input_tokens, dtype=bool)
      cross_mask = layers.attention_mask(dec_valid, enc_valid)
    else:
      if decoder_target_tokens is None:
        raise ValueError("decoder_target_tokens is required outside incremental decoding.")
      dec_valid = decoder_target_tokens > 0
      self_mask = layers.combine_masks(layers.attention_mask(dec_valid, dec_valid),
                                       layers.causal_mask(decoder_target_tokens.shape[-1]))
      cross_mask = layers.attention_mask(dec_valid, enc_valid)
      if decoder_segment_ids is not None:
        self_mask = layers.combine_masks(
            self_mask, layers.attention_mask(decoder_segment_ids, decoder_segment_ids, jnp.equal))
        cross_mask = layers.combine_masks(
            cross_mask, layers.attention_mask(decoder_segment_ids, encoder_segment_ids, jnp.equal))
    return self.decoder(encoded, decoder_input_tokens, self_mask, cross_mask,
                        deterministic=not enable_dropout, decode=decode,
                        decode_position=decode_position)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None, encoder_positions: Array | None = None,
               decoder_positions: Array | None = None, enable_dropout: bool = False) -> Array:
    # Positions are accepted for feature-converter compatibility but unused: relative
    # position biases over the packed row plus segment masks equal per-example biases.
    del encoder_positions, decoder_positions
    if (encoder_segment_ids is None) != (decoder_segment_ids is None):
      raise ValueError("Packed batches need both encoder_segment_ids and decoder_segment_ids.")
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                       encoder_segment_ids, decoder_segment_ids, enable_dropout)
