"""Adafactor's update in slices: the same values, with float32 temporaries one slice in size.

Adafactor reads each parameter and its gradient as float32 (adafactor.py). Updating a whole
tree at once, XLA keeps several parameters' float32 working copies alive together; for mT0-xxl
with bfloat16 storage those copies, not the parameters, set the peak (4 GiB for each vocabulary
matrix, 1 GiB per stacked feed-forward kernel). ``Adafactor.sliced_update`` updates:

- one parameter at a time (``apply``: an optimisation barrier orders each update after the
  previous one's result);
- a stacked parameter one layer at a time (``update_layers``): the layer axis is a batch axis,
  so every statistic is within a slice and the slice's update is ``update_param``'s;
- a large unstacked matrix (the embedding and the output layer) in row chunks
  (``update_rows``): its statistics (parameter scale, factored second moments, update
  clipping) span all rows, so three passes over the chunks compute them first.

Each slice is written in place into the loop carry, and rounds (``stochastic_rounding``) with
the noise its elements get in the whole parameter (``rounding.counter_bits``' offset), so the
result equals the whole-tree update up to float32 summation order.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xmtf_pipeline import rounding

# ``opt`` below is an adafactor.Adafactor; not imported, as adafactor imports this module.
Adafactor = Any

# An unstacked matrix with more elements than this is updated in row chunks of at most as many.
CHUNK_ELEMENTS = 1 << 26  # 256 MiB in float32


def apply(opt: Adafactor, step, lr, leaves):
  """[(new param, new state)] for ``leaves`` = [(param, state, grad, num_batch, key)], updated
  one after another."""
  out = []
  for param, state, grad, num_batch, key in leaves:
    if out:  # this parameter's update starts when the previous one's result exists
      _, (param, state, grad) = jax.lax.optimization_barrier((out[-1], (param, state, grad)))
    if num_batch:
      out.append(update_layers(opt, step, lr, param, state, grad, num_batch, key))
    elif param.ndim == 2 and param.size > CHUNK_ELEMENTS:
      out.append(update_rows(opt, step, lr, param, state, grad, key))
    else:
      out.append(opt.update_param(step, lr, param, state, grad, 0, key))
  return out


def update_layers(opt: Adafactor, step, lr, param, state, grad, num_batch: int, key):
  """``opt.update_param`` one slice of the leading (batch) axis at a time, in place."""
  slots = opt.slots(param.shape, num_batch)
  size = int(np.prod(param.shape[1:]))

  def body(i, carry):
    param, state = carry
    take = functools.partial(jax.lax.dynamic_index_in_dim, index=i, keepdims=False)
    new_p, new_s = opt.update_param(
        step, lr, take(param), {k: take(v) if k in slots else v for k, v in state.items()},
        take(grad), num_batch - 1, key, rounding.slice_offset(i, size))
    put = functools.partial(jax.lax.dynamic_update_index_in_dim, index=i, axis=0)
    return put(param, new_p), {k: put(v, new_s[k]) if k in slots else v
                               for k, v in state.items()}

  return jax.lax.fori_loop(0, param.shape[0], body, (param, state))


def num_row_chunks(shape: tuple[int, int]) -> int:
  """The fewest chunks, dividing the rows evenly, of at most CHUNK_ELEMENTS elements each."""
  rows, cols = shape
  for n in range(1, rows + 1):
    if rows % n == 0 and (rows // n) * cols <= CHUNK_ELEMENTS:
      return n
  return rows


@dataclasses.dataclass(frozen=True)
class _Chunks:
  """Row chunks of a matrix: ``count`` of ``rows`` rows each."""
  count: int
  rows: int

  def take(self, x: jax.Array, c) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(x, c * self.rows, self.rows, axis=0)

  def put(self, x: jax.Array, value: jax.Array, c) -> jax.Array:
    return jax.lax.dynamic_update_slice_in_dim(x, value.astype(x.dtype), c * self.rows, axis=0)


def _second_moments(opt: Adafactor, step, param, state, grad, chunks: _Chunks):
  """Pass 1: the new second-moment slots and the sum of the parameter's squares.

  Factored, the slot averaging out the columns is per row (written chunk by chunk) and the one
  averaging out the rows sums across chunks; unfactored, ``v`` is elementwise.
  """
  f32 = jnp.float32
  decay = opt.decay(step)
  mix = 1.0 - decay
  dims = opt.factored_dims(param.shape)
  per_row = "v" if dims is None else ("v_row" if dims[1] == 1 else "v_col")

  def body(c, carry):
    sum_p2, sum_cols, rows_slot = carry
    p, g = chunks.take(param, c).astype(f32), chunks.take(grad, c).astype(f32)
    grad_sqr = g * g + opt.epsilon1
    new = grad_sqr if dims is None else jnp.mean(grad_sqr, axis=1)
    rows_slot = chunks.put(rows_slot, decay * chunks.take(state[per_row], c) + mix * new, c)
    if dims is not None:
      sum_cols = sum_cols + jnp.sum(grad_sqr, axis=0)
    return sum_p2 + jnp.sum(p * p), sum_cols, rows_slot

  sum_p2, sum_cols, rows_slot = jax.lax.fori_loop(
      0, chunks.count, body, (jnp.zeros((), f32), jnp.zeros((param.shape[1],), f32),
                              jnp.zeros(state[per_row].shape, f32)))
  new_state = dict(state, **{per_row: rows_slot})
  if dims is not None:
    across = "v_col" if per_row == "v_row" else "v_row"
    new_state[across] = decay * state[across] + mix * sum_cols / param.shape[0]
  return sum_p2, new_state


def _scaled_gradient(opt: Adafactor, shape, new_state, grad, chunks: _Chunks):
  """Chunk ``c`` -> the gradient over the root of its second moment (``y`` before clipping)."""
  dims = opt.factored_dims(shape)
  if dims is None:
    return lambda c: (chunks.take(grad, c).astype(jnp.float32)
                      * chunks.take(new_state["v"], c) ** -0.5)
  v_row = new_state["v_row"]
  row_factor = (v_row / jnp.mean(v_row)) ** -0.5
  col_factor = new_state["v_col"] ** -0.5
  # v_row averages out axis d0 = dims[1], so it runs along the other axis.
  per_row, per_col = ((row_factor, col_factor) if dims[1] == 1 else (col_factor, row_factor))
  return lambda c: (chunks.take(grad, c).astype(jnp.float32)
                    * chunks.take(per_row, c)[:, None] * per_col[None, :])


def update_rows(opt: Adafactor, step, lr, param, state, grad, key):
  """``opt.update_param(..., num_batch=0)`` on a matrix, computed in row chunks, in place.

  Pass 1 computes the second moments and the parameter scale; pass 2 sums the squared scaled
  update for clipping; pass 3 writes the update.
  """
  count = num_row_chunks(param.shape)
  chunks = _Chunks(count, param.shape[0] // count)
  sum_p2, new_state = _second_moments(opt, step, param, state, grad, chunks)
  scaled = _scaled_gradient(opt, param.shape, new_state, grad, chunks)

  update_scale = lr
  if opt.multiply_by_parameter_scale:
    param_scale = jnp.maximum(jnp.sqrt(sum_p2 / param.size), opt.epsilon2)
    if opt.max_parameter_scale is not None:
      param_scale = jnp.minimum(param_scale, opt.max_parameter_scale)
    update_scale = update_scale * param_scale

  clip = 1.0
  if opt.clipping_threshold is not None:
    sum_y2 = jax.lax.fori_loop(0, count, lambda c, s: s + jnp.sum(scaled(c) ** 2),
                               jnp.zeros((), jnp.float32))
    clip = jnp.maximum(1.0, jnp.sqrt(sum_y2 / param.size) / opt.clipping_threshold)

  def write(c, carry):
    param, m = carry
    p = chunks.take(param, c).astype(jnp.float32)
    subtrahend = update_scale * (scaled(c) / clip)
    if opt.beta1 is not None:
      old_m = chunks.take(m, c)
      subtrahend = opt.beta1 * old_m + (1.0 - opt.beta1) * subtrahend
      m = chunks.put(m, jnp.where(jnp.isnan(subtrahend), old_m, subtrahend)
                     if opt.skip_nan_updates else subtrahend, c)
    if opt.weight_decay_rate is not None:
      new_p = (1.0 - opt.weight_decay_rate) * p - subtrahend
    else:
      new_p = p - subtrahend
    if opt.skip_nan_updates:
      new_p = jnp.where(jnp.isnan(new_p), p, new_p)
    offset = rounding.slice_offset(c, chunks.rows * param.shape[1])
    return chunks.put(param, rounding.store(new_p, param.dtype, key, offset), c), m

  new_param, new_m = jax.lax.fori_loop(0, count, write, (param, state["m"]))
  if opt.beta1 is not None:
    new_state["m"] = new_m
  if opt.skip_nan_updates:
    new_state.update({k: jnp.where(jnp.isnan(new_state[k]), state[k], new_state[k])
                      for k in ("v_row", "v_col", "v")})
  return new_param, new_state
