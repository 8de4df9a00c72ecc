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

from xmtf_pipeline import axes, fused_accumulation, layers

Array = jax.Array
ATTENTION_IMPLS = ("einsum", "dot_product_attention", "cudnn")
# What a rematerialised layer keeps for the backward pass (None: no remat).
REMAT = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


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
  # Speed options; the defaults are T5X's numerics and parameter layout.
  head_dtype: str = "float32"  # LM-head matmul inputs; "bfloat16" still accumulates in f32
  attention_impl: str = "einsum"  # or "dot_product_attention", "cudnn" (layers.MultiHeadAttention)
  scan_layers: bool = False  # one nn.scan over stacked layers (params gain a leading 'layers' axis)
  remat_policy: str = "none"  # per-layer rematerialisation: none | full | dots | dots_no_batch

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
    for field, allowed in (("head_dtype", ("float32", "bfloat16")),
                           ("attention_impl", ATTENTION_IMPLS), ("remat_policy", tuple(REMAT))):
      if getattr(self, field) not in allowed:
        raise ValueError(f"T5Config.{field} must be one of {', '.join(allowed)}; "
                         f"got {getattr(self, field)!r}.")

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
  scanned: bool = False  # under nn.scan: returns (carry, None)

  @nn.compact
  def __call__(self, inputs: Array, mask: Array | None, bias: Array, deterministic: bool):
    cfg = self.config
    dt = cfg.compute_dtype
    x = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_attention_layer_norm")(inputs)
    x = _attention(cfg, "attention")(x, x, mask, bias, deterministic)
    x = _dropout(cfg.dropout_rate, x, deterministic) + inputs
    y = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_mlp_layer_norm")(x)
    y = layers.MlpBlock(cfg.mlp_dim, cfg.dropout_rate, dt, name="mlp")(y, deterministic)
    y = _dropout(cfg.dropout_rate, y, deterministic) + x
    y = layers.constrain(y, (axes.BATCH, axes.LENGTH, axes.EMBED))
    return (y, None) if self.scanned else y


class DecoderLayer(nn.Module):
  config: T5Config
  scanned: bool = False

  @nn.compact
  def __call__(self, inputs: Array, encoded: Array, self_mask: Array | None,
               cross_mask: Array | None, bias: Array, deterministic: bool, decode: bool = False):
    cfg = self.config
    dt = cfg.compute_dtype
    x = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_self_attention_layer_norm")(inputs)
    x = _attention(cfg, "self_attention", causal=True)(x, x, self_mask, bias, deterministic,
                                                       decode=decode)
    x = _dropout(cfg.dropout_rate, x, deterministic) + inputs
    y = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_cross_attention_layer_norm")(x)
    y = _attention(cfg, "encoder_decoder_attention")(y, encoded, cross_mask, None, deterministic)
    y = _dropout(cfg.dropout_rate, y, deterministic) + x
    z = layers.RMSNorm(cfg.layer_norm_epsilon, dt, name="pre_mlp_layer_norm")(y)
    z = layers.MlpBlock(cfg.mlp_dim, cfg.dropout_rate, dt, name="mlp")(z, deterministic)
    z = _dropout(cfg.dropout_rate, z, deterministic) + y
    z = layers.constrain(z, (axes.BATCH, axes.LENGTH, axes.EMBED))
    return (z, None) if self.scanned else z


def _attention(cfg: T5Config, name: str, causal: bool = False) -> layers.MultiHeadAttention:
  return layers.MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate,
                                   cfg.compute_dtype, cfg.float32_attention_logits,
                                   cfg.attention_impl, causal, name=name)


def _padding(mask: Array, q_valid: Array, kv_valid: Array, fused: bool):
  """``mask``, or with fused attention a PaddingMask carrying the rows' lengths.

  Only for unpacked batches, whose padding is trailing (seqio pads at the end).
  """
  if not fused:
    return mask
  return layers.PaddingMask(mask, jnp.sum(q_valid, -1, dtype=jnp.int32),
                            jnp.sum(kv_valid, -1, dtype=jnp.int32))


def _layer_stack(layer_cls: type[nn.Module], cfg: T5Config, num_layers: int, num_args: int,
                 static_argnums: tuple[int, ...]):
  """The layer class to call: plain, rematerialised, and/or scanned over ``num_layers``.

  ``static_argnums`` index the Python-valued call arguments (counting ``self`` as 0),
  which remat must not trace. Scanned, every argument but the carry is broadcast to
  all layers and parameters (and decode caches) gain a leading ``layers`` axis.
  """
  cls = layer_cls
  policy = REMAT[cfg.remat_policy]
  if policy is not None:
    cls = nn.remat(cls, policy=policy, prevent_cse=not cfg.scan_layers,
                   static_argnums=static_argnums)
  if not cfg.scan_layers:
    return cls
  return nn.scan(cls, variable_axes={"params": 0, "cache": 0},
                 split_rngs={"params": True, "dropout": True},
                 in_axes=(nn.broadcast,) * (num_args - 1), length=num_layers,
                 metadata_params={nn.PARTITION_NAME: axes.LAYERS})


def _fused_layers(module: nn.Module, layer_cls: type[nn.Module], num_layers: int, x: Array,
                  consts: tuple, aux: tuple, deterministic: bool, call) -> Array:
  """The scanned layers through ``fused_accumulation.layer_stack`` (training only).

  Parameters and running sums are read at the ``layers`` path, where ``nn.scan`` keeps them.
  Each layer's dropout key is a split of one key of this module: a stream as good as
  ``nn.scan``'s but not the same one (flax's scan traces its body twice and its keys depend on
  that count), so with dropout the lever changes which units drop, not how many.
  ``call(layer, h, consts, aux)`` applies one layer module.
  """
  cfg = module.config
  rngs = None
  if not deterministic and cfg.dropout_rate > 0.0:
    rngs = jax.random.split(module.make_rng("dropout"), num_layers)

  def layer(p, h, c, a, r):
    return layer_cls(cfg).apply({"params": p}, h, c, a, method=call,
                                rngs=None if r is None else {"dropout": r})

  return fused_accumulation.layer_stack(
      layer, module.get_variable("params", "layers"),
      module.get_variable(fused_accumulation.COLLECTION, "layers"),
      module.get_variable(fused_accumulation.KEYS_COLLECTION, "layers"),
      x, consts, aux, rngs)


def _fused(module: nn.Module) -> bool:
  return module.config.scan_layers and module.has_variable(fused_accumulation.COLLECTION,
                                                           "layers")


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, mask: Array | None, deterministic: bool) -> Array:
    cfg = self.config
    length = tokens.shape[-1]
    bias = layers.RelativePositionBiases(cfg.num_heads, cfg.relpos_num_buckets,
                                         cfg.relpos_max_distance, cfg.compute_dtype,
                                         name="relpos_bias")(length, length, bidirectional=True)
    x = self.shared_embedding(tokens)
    x = _dropout(cfg.dropout_rate, x, deterministic).astype(cfg.compute_dtype)
    x = layers.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
    layer = _layer_stack(EncoderLayer, cfg, cfg.num_encoder_layers, 4, static_argnums=(4,))
    if _fused(self):
      x = _fused_layers(self, EncoderLayer, cfg.num_encoder_layers, x, (bias,), (mask,),
                        deterministic,
                        lambda m, h, c, a: m(h, a[0], c[0], deterministic))
    elif cfg.scan_layers:
      x, _ = layer(cfg, scanned=True, name="layers")(x, mask, bias, deterministic)
    else:
      for i in range(cfg.num_encoder_layers):
        x = layer(cfg, name=f"layers_{i}")(x, mask, bias, deterministic)
    x = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="encoder_norm")(x)
    # After the final norm the encoder drops elementwise (T5X), the decoder broadcast.
    return _dropout(cfg.dropout_rate, x, deterministic, broadcast=False)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, decoder_input_tokens: Array, self_mask: Array | None,
               cross_mask: Array | None, deterministic: bool, decode: bool = False,
               decode_position: Array | None = None, return_hidden: bool = False) -> Array:
    """Float32 logits; with ``return_hidden``, the final hidden states the head would take."""
    cfg = self.config
    rel_emb = layers.RelativePositionBiases(cfg.num_heads, cfg.relpos_num_buckets,
                                            cfg.relpos_max_distance, cfg.compute_dtype,
                                            name="relpos_bias")
    if decode and decode_position is not None:
      bias = rel_emb(1, self._cache_length(), bidirectional=False, query_offset=decode_position)
    else:  # full sequence, or the call that allocates the decode cache
      length = decoder_input_tokens.shape[-1]
      bias = rel_emb(length, length, bidirectional=False)
    y = self.shared_embedding(decoder_input_tokens)
    y = _dropout(cfg.dropout_rate, y, deterministic).astype(cfg.compute_dtype)
    y = layers.constrain(y, (axes.BATCH, axes.LENGTH, axes.EMBED))
    layer = _layer_stack(DecoderLayer, cfg, cfg.num_decoder_layers, 7, static_argnums=(6, 7))
    if _fused(self) and not decode:
      y = _fused_layers(self, DecoderLayer, cfg.num_decoder_layers, y, (encoded, bias),
                        (self_mask, cross_mask), deterministic,
                        lambda m, h, c, a: m(h, c[0], a[0], a[1], c[1], deterministic))
    elif cfg.scan_layers:
      y, _ = layer(cfg, scanned=True, name="layers")(
          y, encoded, self_mask, cross_mask, bias, deterministic, decode)
    else:
      for i in range(cfg.num_decoder_layers):
        y = layer(cfg, name=f"layers_{i}")(
            y, encoded, self_mask, cross_mask, bias, deterministic, decode)
    y = layers.RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name="decoder_norm")(y)
    y = _dropout(cfg.dropout_rate, y, deterministic)
    if return_hidden:
      return y
    # Untied output projection, no rescale (mT5: logits_via_embedding=False); T5X runs it
    # in float32, head_dtype="bfloat16" in bf16 with float32 accumulation.
    logits = layers.DenseGeneral(cfg.vocab_size, kernel_axes=(axes.EMBED, axes.VOCAB),
                                 dtype=jnp.dtype(cfg.head_dtype), out_dtype=jnp.float32,
                                 name="logits_dense")(y)
    return layers.constrain(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))

  def _cache_length(self) -> int:
    """The decode cache's length (its keys are (batch, length, heads, kv), stacked or not)."""
    cache = self.variables["cache"]
    if self.config.scan_layers:
      return cache["layers"]["self_attention"]["cached_key"].shape[2]
    return cache["layers_0"]["self_attention"]["cached_key"].shape[1]


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
    else:
      mask = _padding(mask, valid, valid, self.config.attention_impl != "einsum")
    return self.encoder(encoder_input_tokens, mask, deterministic=not enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Array | None = None,
             encoder_segment_ids: Array | None = None, decoder_segment_ids: Array | None = None,
             enable_dropout: bool = False, decode: bool = False,
             decode_position: Array | None = None, return_hidden: bool = False) -> Array:
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
      else:
        fused = self.config.attention_impl != "einsum"
        self_mask = _padding(self_mask, dec_valid, dec_valid, fused)
        cross_mask = _padding(cross_mask, dec_valid, enc_valid, fused)
    return self.decoder(encoded, decoder_input_tokens, self_mask, cross_mask,
                        deterministic=not enable_dropout, decode=decode,
                        decode_position=decode_position, return_hidden=return_hidden)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None, encoder_positions: Array | None = None,
               decoder_positions: Array | None = None, enable_dropout: bool = False,
               return_hidden: bool = False) -> Array:
    """Float32 logits, or (``return_hidden``) the decoder's final hidden states."""
    # Positions are accepted for feature-converter compatibility but unused: relative
    # position biases over the packed row plus segment masks equal per-example biases.
    del encoder_positions, decoder_positions
    if (encoder_segment_ids is None) != (decoder_segment_ids is None):
      raise ValueError("Packed batches need both encoder_segment_ids and decoder_segment_ids.")
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                       encoder_segment_ids, decoder_segment_ids, enable_dropout,
                       return_hidden=return_hidden)
