"""Building blocks of the T5.1.1 / mT5 network, with T5X's exact numerics.

Every parameter is created with logical axis names (see ``axes``) and stored
in float32; computation happens in ``dtype`` (bfloat16 for training, float32
for checks). Kernels are stored 2-D ``(in, out)`` as in T5X checkpoints.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xmtf_pipeline import axes

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]

# T5X's large negative value for masked attention logits.
MASK_VALUE = -1e10

# T5X's initialisers, family by family (t5x/examples/t5/layers.py and network.py; the
# mT5 gins set none of them). Kernels are (in, out), so fan_in is the contracted size.
# DenseGeneral and MlpBlock (wi_0, wi_1, wo) and the untied logits_dense: a normal
# truncated at 2 standard deviations, rescaled to std sqrt(1 / fan_in).
default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
# MultiHeadDotProductAttention.kernel_init (query, key, value, out): an untruncated
# normal of std sqrt(1 / fan_in); the query's is further divided by sqrt(head_dim).
attention_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
# network.Transformer's token_embedder: normal(stddev=1.0) (not layers.Embed's default).
token_embedding_init = nn.initializers.normal(stddev=1.0)
# network.Encoder/Decoder relpos_bias, table (heads, buckets): uniform, fan_avg.
relpos_embedding_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
# LayerNorm scale: ones. No layer has a bias.


def _canonicalize_tuple(x: int | Sequence[int]) -> tuple[int, ...]:
  return tuple(x) if isinstance(x, Sequence) else (x,)


def param(module: nn.Module, name: str, init: Initializer, shape: tuple[int, ...],
          logical_axes: tuple[str | None, ...]) -> Array:
  """A float32 parameter carrying its logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, logical_axes), shape, jnp.float32)


def constrain(x: Array, logical_axes: tuple[str | None, ...]) -> Array:
  """Activation sharding constraint by logical names (a no-op without a mesh)."""
  return nn.with_logical_constraint(x, logical_axes)


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, no bias; statistics in f32."""
  epsilon: float = 1e-6
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = jnp.asarray(x, jnp.float32)
    mean2 = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    y = jnp.asarray(x * jax.lax.rsqrt(mean2 + self.epsilon), self.dtype)
    scale = param(self, "scale", nn.initializers.ones, (x.shape[-1],), (axes.EMBED,))
    return y * jnp.asarray(scale, self.dtype)


class DenseGeneral(nn.Module):
  """A bias-free dense layer whose kernel is stored flattened as (in, out).

  ``features`` may be a tuple (e.g. (heads, head_dim)); ``axis`` names the
  input axes contracted. The stored kernel has shape
  ``(prod(in dims), prod(features))`` so T5X checkpoints load as they are.
  """
  features: int | Sequence[int]
  axis: int | Sequence[int] = -1
  kernel_axes: tuple[str, str] = ()
  dtype: DType = jnp.float32
  kernel_init: Initializer = default_kernel_init
  # The matmul's output type (None: ``dtype``); float32 with bfloat16 inputs accumulates
  # and returns float32 (the LM head's bf16 option).
  out_dtype: DType | None = None

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    features = _canonicalize_tuple(self.features)
    axis = tuple(a % inputs.ndim for a in _canonicalize_tuple(self.axis))
    in_shape = tuple(inputs.shape[a] for a in axis)
    flat_shape = (int(np.prod(in_shape)), int(np.prod(features)))
    kernel = param(self, "kernel", self.kernel_init, flat_shape, self.kernel_axes)
    kernel = jnp.asarray(kernel, self.dtype).reshape(in_shape + features)
    inputs = jnp.asarray(inputs, self.dtype)
    contract = (axis, tuple(range(len(axis))))
    return jax.lax.dot_general(inputs, kernel, (contract, ((), ())),
                               preferred_element_type=self.out_dtype)


def head_logits(hidden: Array, kernel: Array, dtype: DType) -> Array:
  """The LM head exactly as ``DenseGeneral(dtype=dtype, out_dtype=float32)`` computes it.

  Shared by the network and the chunked loss, so both paths give the same logits.
  """
  return jax.lax.dot_general(jnp.asarray(hidden, dtype), jnp.asarray(kernel, dtype),
                             (((hidden.ndim - 1,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)


class Embed(nn.Module):
  """Shared token embedding (no sqrt(d) scaling); rows cast to ``dtype``."""
  num_embeddings: int
  features: int
  dtype: DType = jnp.float32
  embedding_init: Initializer = token_embedding_init

  def setup(self):
    self.embedding = param(self, "embedding", self.embedding_init,
                           (self.num_embeddings, self.features), (axes.VOCAB, axes.EMBED))

  def __call__(self, inputs: Array) -> Array:
    # A gather equals T5X's one-hot matmul exactly (each output row is one table
    # row) without a (tokens x vocab) matmul. It gathers from the float32 table and
    # casts the rows (the same values as gathering from the cast table), so the
    # gradient is a float32 scatter-add: native atomics on GPUs, where a bf16 one
    # is a compare-and-swap loop that real batches, mostly padding (id 0), contend
    # on one row. bench_embed measures the alternatives.
    # A bfloat16-stored table (Adafactor.param_dtype) is read as float32 for the same reason.
    rows = jnp.take(jnp.asarray(self.embedding, jnp.float32), inputs.astype(jnp.int32), axis=0)
    return jnp.asarray(rows, self.dtype)


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int,
                             max_distance: int, xp=np):
  """T5's bucketing of ``memory_position - query_position`` (T5X formula, f32 eps).

  ``xp`` is numpy for static shapes (computed once at trace time, as T5X does) or
  jax.numpy when the query position is traced (incremental decoding).
  """
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = xp.abs(n)
  else:
    n = xp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      xp.log(n.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
      / np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = xp.minimum(val_if_large, num_buckets - 1)
  return ret + xp.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
  """One (heads, buckets) table per stack; returns a (1, heads, q, k) bias."""
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  dtype: DType = jnp.float32
  embedding_init: Initializer = relpos_embedding_init

  @nn.compact
  def __call__(self, qlen: int, klen: int, bidirectional: bool, query_offset: Array | int = 0
               ) -> Array:
    table = param(self, "rel_embedding", self.embedding_init, (self.num_heads, self.num_buckets),
                  (axes.HEADS, axes.RELPOS_BUCKETS))
    if isinstance(query_offset, int) and query_offset == 0:
      # Static shapes: buckets are computed once with numpy, as in T5X.
      rel = np.arange(klen)[None, :] - np.arange(qlen)[:, None]
      buckets = jnp.asarray(relative_position_bucket(rel, bidirectional, self.num_buckets,
                                                     self.max_distance))
    else:
      # Incremental decoding: the query sits at a traced position.
      rel = jnp.arange(klen)[None, :] - (jnp.arange(qlen)[:, None] + query_offset)
      buckets = relative_position_bucket(rel, bidirectional, self.num_buckets,
                                         self.max_distance, xp=jnp)
    # T5X's one-hot contraction, not a gather: a gather's gradient is a scatter-add of
    # q*k updates into heads*buckets words (about a million at 1024), serialised on
    # GPUs and, from a bf16 table, rounded to bf16 at every add (47% off at 1024/256).
    # The dot's gradient is a dot with float32 accumulation. The table stays float32
    # (one nonzero product per output, so the values are the table's exactly) and the
    # result is cast once: the same bias T5X gets from its bf16-cast table.
    one_hot = buckets[None] == jax.lax.broadcasted_iota(jnp.int32, (self.num_buckets, 1, 1), 0)
    table = jnp.asarray(table, jnp.float32)  # a bfloat16-stored table too (param_dtype)
    values = jax.lax.dot_general(table, one_hot.astype(jnp.float32), (((1,), (0,)), ((), ())),
                                 precision=jax.lax.Precision.HIGHEST,
                                 preferred_element_type=jnp.float32)
    return values.astype(self.dtype)[None]


class MlpBlock(nn.Module):
  """Gated GELU: wo(gelu_tanh(x wi_0) * (x wi_1)), dropout on the product."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    gate = DenseGeneral(self.mlp_dim, kernel_axes=(axes.EMBED, axes.MLP), dtype=self.dtype,
                        name="wi_0")(x)
    linear = DenseGeneral(self.mlp_dim, kernel_axes=(axes.EMBED, axes.MLP), dtype=self.dtype,
                          name="wi_1")(x)
    # flax's gelu is the tanh approximation (HF "gelu_new"), as T5X uses.
    h = nn.gelu(gate, approximate=True) * linear
    h = nn.Dropout(rate=self.dropout_rate, broadcast_dims=(-2,))(h, deterministic=deterministic)
    h = constrain(h, (axes.BATCH, axes.LENGTH, axes.MLP))
    out = DenseGeneral(x.shape[-1], kernel_axes=(axes.MLP, axes.EMBED), dtype=self.dtype,
                       name="wo")(h)
    return out


@flax.struct.dataclass
class PaddingMask:
  """An attention mask that is padding (and causality) alone, with its lengths.

  Unpacked seqio batches pad at the end, so ``mask`` is also described by each row's
  query and key lengths. Fused attention takes the lengths instead of the mask: JAX's
  cuDNN path would fold a (batch, 1, q, k) mask into the position bias, making the
  bias batch-sized (as large as the attention matrix) and its gradient depend on the
  kernel's batch-bias support. The einsum path uses ``mask``.
  """
  mask: Array
  q_lengths: Array  # (batch,) int32
  kv_lengths: Array


def combine_masks(*masks: Array | None) -> Array | None:
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0]
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return out


def attention_mask(query_input: Array, key_input: Array,
                   pairwise_fn: Callable[[Array, Array], Array] = jnp.logical_and) -> Array:
  """(batch, 1, q, k) boolean mask from per-position query/key values."""
  return pairwise_fn(query_input[:, :, None], key_input[:, None, :])[:, None]


def causal_mask(length: int) -> Array:
  idx = jnp.arange(length)
  return (idx[None, :] <= idx[:, None])[None, None]


class MultiHeadAttention(nn.Module):
  """T5 attention: no biases, no 1/sqrt(d) logit scaling (folded into q's init).

  With ``decode=True`` keys and values are appended to a cache of
  ``max_decode_length`` (collection ``cache``), one position per call.
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  float32_logits: bool = False
  # "einsum": T5X's ops. "dot_product_attention": jax.nn.dot_product_attention (XLA);
  # "cudnn": the same with cuDNN's fused (flash) kernel. Both fused forms run where no
  # attention dropout is active and outside incremental decoding (T5X's dropout mask,
  # shared by all queries, has no fused equivalent); elsewhere the einsum path runs.
  implementation: str = "einsum"
  causal: bool = False  # decoder self-attention (fused kernels with lengths need to know)
  kernel_init: Initializer = attention_kernel_init

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | PaddingMask | None,
               bias: Array | None, deterministic: bool, decode: bool = False) -> Array:
    # As T5X: sqrt(head_dim) rounded to the compute dtype (exact for 64), the float32
    # kernel divided by it.
    depth_scaling = jnp.sqrt(self.head_dim).astype(self.dtype)

    def query_init(*args):
      return self.kernel_init(*args) / depth_scaling

    proj = functools.partial(DenseGeneral, features=(self.num_heads, self.head_dim),
                             kernel_axes=(axes.EMBED, axes.JOINED_KV), dtype=self.dtype)
    query = proj(kernel_init=query_init, name="query")(inputs_q)
    key = proj(kernel_init=self.kernel_init, name="key")(inputs_kv)
    value = proj(kernel_init=self.kernel_init, name="value")(inputs_kv)
    head_axes = (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV)
    query, key, value = (constrain(t, head_axes) for t in (query, key, value))

    padding = mask if isinstance(mask, PaddingMask) else None
    if padding is not None:
      mask = padding.mask
    if decode:
      key, value, mask = self._update_cache(key, value, mask)

    dropout = not deterministic and self.dropout_rate > 0.0
    if self.implementation != "einsum" and not dropout and not decode:
      # The (1, heads, q, k) position bias stays broadcast over the batch; padding goes
      # in as lengths where known (see PaddingMask), else as the mask.
      lengths = {}
      if padding is not None:
        lengths = dict(query_seq_lengths=padding.q_lengths,
                       key_value_seq_lengths=padding.kv_lengths, is_causal=self.causal)
      out = jax.nn.dot_product_attention(
          query, key, value, bias=None if bias is None else bias.astype(query.dtype),
          mask=None if padding is not None else mask, scale=1.0,
          implementation="cudnn" if self.implementation == "cudnn" else None, **lengths)
    else:
      out = self._einsum_attention(query, key, value, mask, bias, dropout)
    out = constrain(out, head_axes)
    return DenseGeneral(inputs_q.shape[-1], axis=(-2, -1), kernel_axes=(axes.JOINED_KV, axes.EMBED),
                        dtype=self.dtype, kernel_init=self.kernel_init, name="out")(out)

  def _einsum_attention(self, query: Array, key: Array, value: Array, mask: Array | None,
                        bias: Array | None, dropout: bool) -> Array:
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key)
    if self.float32_logits:
      logits = logits.astype(jnp.float32)
    if mask is not None:
      logits = logits + jnp.where(mask, 0.0, MASK_VALUE).astype(logits.dtype)
    if bias is not None:
      logits = logits + bias.astype(logits.dtype)
    weights = jax.nn.softmax(logits).astype(self.dtype)
    if dropout:
      keep_prob = 1.0 - self.dropout_rate
      # One mask per (example, head, key), shared by all queries (T5X).
      shape = weights.shape[:-2] + (1,) + weights.shape[-1:]
      keep = jax.random.bernoulli(self.make_rng("dropout"), keep_prob, shape)
      weights = weights * (keep.astype(self.dtype) / jnp.asarray(keep_prob, self.dtype))
    return jnp.einsum("bhqk,bkhd->bqhd", weights, value)

  def _update_cache(self, key: Array, value: Array, mask: Array | None):
    """Writes this step's key/value at ``cache_index`` and masks unwritten slots."""
    initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not initialized:
      # The init call only allocates the (batch, max_length, heads, kv) buffers.
      return key, value, mask
    if key.shape[1] != 1:
      raise ValueError(f"Incremental decoding feeds one position at a time, got {key.shape[1]}.")
    idx = cache_index.value
    keys = jax.lax.dynamic_update_slice(cached_key.value, key, (0, idx, 0, 0))
    values = jax.lax.dynamic_update_slice(cached_value.value, value, (0, idx, 0, 0))
    cached_key.value, cached_value.value = keys, values
    cache_index.value = idx + 1
    written = (jnp.arange(keys.shape[1]) <= idx)[None, None, None, :]
    mask = written if mask is None else jnp.logical_and(mask, written)
    return keys, values, mask
