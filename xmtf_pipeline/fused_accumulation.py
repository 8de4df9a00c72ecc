"""Gradient accumulation fused into the backward pass of a scanned layer stack.

With microbatches, plain accumulation holds two stacked-layer-sized trees at once: the sum so
far and the microbatch's gradient, which JAX's scan transpose writes as a fresh stacked output
before the trainer adds it. For mT0-xxl that second tree is 24 GiB even in bfloat16.

Here the stack is a ``jax.custom_vjp`` whose backward pass is written out: a loop over the
layers from the last, recomputing each layer from its saved input (per-layer remat, as
``remat_policy='full'``), with the running sum as a loop carry updated in place one layer at a
time (``sum[l] += g_l``). The cotangent it returns for the stacked parameters *is* the new sum,
so differentiating the loss with respect to the parameters yields ``sum + gradient`` with no
gradient-sized buffer beside it. The trainer passes the sum in as the ``grad_acc`` variable
collection (``compute_gradients(..., fused=True)``); without it the network runs its usual
``nn.scan``.

Each layer's addition is the trainer's: float32 sums add in float32; a bfloat16 sum is added
in float32 and stochastically rounded with the same key and the same per-element noise as a
whole-leaf rounding (``rounding.store``'s counter offset by the layer), so fused and plain
accumulation compute the same values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xmtf_pipeline import rounding

PyTree = Any
# (layer params, layer input, differentiable broadcast inputs, other inputs, dropout rng) -> output
LayerFn = Callable[[PyTree, jax.Array, tuple, tuple, Any], jax.Array]
COLLECTION = "grad_acc"  # the running sums, at each stack's parameter path
KEYS_COLLECTION = "grad_acc_keys"  # their stochastic-rounding keys (absent: plain addition)


def is_stacked(key_path) -> bool:
  """Whether a parameter path (a tree key path) is in a scanned stack: ``*/layers/...``."""
  names = [str(getattr(k, "key", k)) for k in key_path]
  return len(names) > 1 and names[0] in ("encoder", "decoder") and names[1] == "layers"


def collections(sums: PyTree, keys: PyTree | None) -> dict[str, Any]:
  """The variable collections that turn on the fused path: each stack's running sums (and
  their rounding keys), at the stacks' parameter paths."""
  out = {COLLECTION: {s: {"layers": sums[s]["layers"]} for s in ("encoder", "decoder")}}
  if keys is not None:
    out[KEYS_COLLECTION] = {s: {"layers": keys[s]["layers"]} for s in ("encoder", "decoder")}
  return out


def add_slice(total: jax.Array, grad: jax.Array, layer: jax.Array, key: jax.Array | None):
  """``total`` with ``grad`` added to its ``layer``-th slice, in place in a loop carry.

  The sum is computed in float32 and stored in ``total``'s dtype as ``rounding.store`` would
  store the whole leaf: the rounding noise of each element is the one its flat index in the
  whole leaf gets.
  """
  current = jax.lax.dynamic_index_in_dim(total, layer, keepdims=False)
  value = current.astype(jnp.float32) + grad.astype(jnp.float32)
  if total.dtype == jnp.float32 or key is None:
    new = value.astype(total.dtype)
  else:
    offset = rounding.slice_offset(layer, int(np.prod(current.shape)))
    new = rounding.store(value, total.dtype, key, offset=offset)
  return jax.lax.dynamic_update_index_in_dim(total, new, layer, 0)


def _index(tree: PyTree, i) -> PyTree:
  return jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False),
                                tree)


def _forward(layer: LayerFn, params, x, consts, aux, rngs):
  def body(h, xs):
    p, r = xs
    return layer(p, h, consts, aux, r), h  # each layer's input is the backward pass's residual
  return jax.lax.scan(body, x, (params, rngs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _stack(layer, params, sums, keys, x, consts, aux, rngs):
  del sums, keys
  return _forward(layer, params, x, consts, aux, rngs)[0]


def _stack_fwd(layer, params, sums, keys, x, consts, aux, rngs):
  y, inputs = _forward(layer, params, x, consts, aux, rngs)
  return y, (params, sums, keys, inputs, consts, aux, rngs)


def _stack_bwd(layer, residuals, ct_y):
  params, sums, keys, inputs, consts, aux, rngs = residuals
  num_layers = inputs.shape[0]

  def body(i, carry):
    ct_h, sums, ct_consts = carry
    index = num_layers - 1 - i
    r = None if rngs is None else _index(rngs, index)
    _, vjp = jax.vjp(lambda p, h, c: layer(p, h, c, aux, r), _index(params, index),
                     inputs[index], consts)
    grads, ct_h, ct_c = vjp(ct_h)
    leaf_keys = (jax.tree_util.tree_map(lambda _: None, sums) if keys is None else keys)
    sums = jax.tree_util.tree_map(lambda s, g, k: add_slice(s, g, index, k), sums, grads,
                                  leaf_keys, is_leaf=lambda x: x is None)
    return ct_h, sums, jax.tree_util.tree_map(jnp.add, ct_consts, ct_c)

  zeros = jax.tree_util.tree_map(jnp.zeros_like, consts)
  ct_x, sums, ct_consts = jax.lax.fori_loop(0, num_layers, body, (ct_y, sums, zeros))
  # The parameters' cotangent is the running sum with this microbatch added.
  return sums, None, None, ct_x, ct_consts, None, None


_stack.defvjp(_stack_fwd, _stack_bwd)


def layer_stack(layer: LayerFn, params: PyTree, sums: PyTree, keys: PyTree | None, x: jax.Array,
                consts: tuple, aux: tuple, rngs: jax.Array | None) -> jax.Array:
  """``layer`` applied over the stacked ``params`` (leading axis = layers), carrying ``x``.

  Differentiated with respect to ``params`` it returns ``sums`` plus the gradient, computed in
  place (see the module docstring); ``consts`` (encoder output, position bias) get their
  gradients summed over the layers, ``aux`` (masks) and ``rngs`` (one per layer) none.
  ``sums`` must have the parameters' dtypes: a cotangent has its primal's dtype.
  """
  for path, (p, s) in _paired(params, sums):
    if p.shape != s.shape or p.dtype != s.dtype:
      raise ValueError(f"Fused accumulation: the sum for {path} is {s.dtype}{list(s.shape)}, "
                       f"the parameter {p.dtype}{list(p.shape)}; the accumulator must have the "
                       "parameters' dtype (set Adafactor.accumulator_dtype to param_dtype).")
  return _stack(layer, params, sums, keys, x, consts, aux, rngs)


def _paired(a: PyTree, b: PyTree):
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = jax.tree_util.tree_leaves(b)
  return [(jax.tree_util.keystr(path), (x, y)) for (path, x), y in zip(flat_a, flat_b)]
