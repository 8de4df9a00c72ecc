"""Stochastic rounding of float32 values to bfloat16, for parameters stored in bfloat16.

Round-to-nearest loses every update smaller than half a bfloat16 spacing (2^-8 of the value):
late in training, Adafactor's updates to a weight of 1.0 are mostly below it, so bfloat16
storage alone stalls. Rounding up with probability equal to the distance from the lower
neighbour keeps the expectation: E[round(x)] = x, so small updates survive on average
(Gupta et al. 2015; Zamirai et al. 2020, "Revisiting BFloat16 Training").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_LOW_BITS = 0xFFFF  # float32 mantissa bits that bfloat16 drops


def counter_bits(key: jax.Array, shape: tuple[int, ...], offset=0) -> jax.Array:
  """Pseudo-random uint32 per element: murmur3's 32-bit finaliser of (element index, key).

  ``offset`` (uint32, may be traced) is added to the row-major element index, so a slice of
  an array gets the bits its elements get in the whole array (fused_accumulation rounds a
  stacked parameter one layer at a time).

  Elementwise on an iota, so XLA fuses it into the rounding that consumes it; threefry's bits
  (``jax.random.bits``) were materialised as a whole uint32 array per parameter on XLA:CPU.
  Statistical quality is ample for rounding (a bijective mix of a counter; the rounding tests
  check the mean); it is not a cryptographic or general-purpose generator.
  """
  words = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) \
      else key
  words = jnp.asarray(words, jnp.uint32).reshape(-1)
  index = jnp.zeros(shape, jnp.uint32) + jnp.asarray(offset, jnp.uint32)
  stride = 1
  for dim in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(stride & 0xFFFFFFFF)
    stride *= shape[dim]
  h = index * jnp.uint32(0x9E3779B9) + words[0]
  h = h ^ (words[-1] * jnp.uint32(0x85EBCA6B))
  for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35), (16, None)):
    h = h ^ (h >> shift)
    if mult is not None:
      h = h * jnp.uint32(mult)
  return h


def slice_offset(index, slice_size: int) -> jax.Array:
  """``counter_bits``' offset for slice ``index`` (may be traced) of an array cut into slices
  of ``slice_size`` elements along its first axis; wraps modulo 2^32 as the index does."""
  return jnp.asarray(index, jnp.uint32) * jnp.uint32(slice_size & 0xFFFFFFFF)


def stochastic_round_to_bfloat16(x: jax.Array, key: jax.Array, offset=0) -> jax.Array:
  """``x`` (float32) to bfloat16, rounding up or down at random, unbiased.

  Adds 16 uniform random bits below bfloat16's last mantissa bit and truncates: the
  magnitude rounds away from zero with probability (dropped bits) / 2^16, which is the
  distance to the lower neighbour in units of the spacing. Sign-magnitude makes this
  symmetric for negative values. Values already in bfloat16 are unchanged; NaN stays NaN;
  a value above bfloat16's largest may round to infinity, as round-to-nearest does.
  """
  x = jnp.asarray(x, jnp.float32)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  noise = counter_bits(key, x.shape, offset) & _LOW_BITS
  rounded = (bits + noise) & ~jnp.uint32(_LOW_BITS)
  out = jax.lax.bitcast_convert_type(rounded, jnp.float32)
  return jnp.where(jnp.isnan(x), x, out).astype(jnp.bfloat16)


def store(x: jax.Array, dtype: jnp.dtype, key: jax.Array | None, offset=0) -> jax.Array:
  """``x`` in the storage ``dtype``: stochastically rounded to bfloat16 when ``key`` is given,
  else a plain (round-to-nearest) cast."""
  if key is not None and jnp.dtype(dtype) == jnp.bfloat16 and x.dtype != jnp.bfloat16:
    return stochastic_round_to_bfloat16(x, key, offset)
  return x.astype(dtype)
