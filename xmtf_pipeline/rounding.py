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


def stochastic_round_to_bfloat16(x: jax.Array, key: jax.Array) -> jax.Array:
  """``x`` (float32) to bfloat16, rounding up or down at random, unbiased.

  Adds 16 uniform random bits below bfloat16's last mantissa bit and truncates: the
  magnitude rounds away from zero with probability (dropped bits) / 2^16, which is the
  distance to the lower neighbour in units of the spacing. Sign-magnitude makes this
  symmetric for negative values. Values already in bfloat16 are unchanged; NaN stays NaN;
  a value above bfloat16's largest may round to infinity, as round-to-nearest does.
  """
  x = jnp.asarray(x, jnp.float32)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  noise = jax.random.bits(key, x.shape, jnp.uint32) & _LOW_BITS
  rounded = (bits + noise) & ~jnp.uint32(_LOW_BITS)
  out = jax.lax.bitcast_convert_type(rounded, jnp.float32)
  return jnp.where(jnp.isnan(x), x, out).astype(jnp.bfloat16)


def store(x: jax.Array, dtype: jnp.dtype, key: jax.Array | None) -> jax.Array:
  """``x`` in the storage ``dtype``: stochastically rounded to bfloat16 when ``key`` is given,
  else a plain (round-to-nearest) cast."""
  if key is not None and jnp.dtype(dtype) == jnp.bfloat16 and x.dtype != jnp.bfloat16:
    return stochastic_round_to_bfloat16(x, key)
  return x.astype(dtype)
