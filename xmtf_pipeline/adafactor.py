"""Adafactor exactly as T5X's ``t5x/adafactor.py`` defines it.

State layout mirrors T5X checkpoints so their optimizer state restores as is:
``state/step`` (int32) and ``state/param_states/<param path>/{v_row,v_col,v,m}``,
unused slots being float32 zeros of shape (1,).

Factoring: T5X's ``standard_logical_factor_rules`` are ignored for parameters of
rank <= 2 without a BATCH axis (every mT5 parameter; T5X logs a warning and falls
back), so the shape heuristic applies: factor when the second-largest dimension is
>= ``min_dim_size_to_factor``; ``v_row`` averages out the largest dimension and
``v_col`` the second largest.

Scanned layers stack each layer's parameter along a leading ``layers`` axis, which
is a BATCH axis here as in T5X: the parameter scale, the factoring heuristic, the
row means and the update clipping are all computed within each layer's slice, so a
stacked parameter's update equals the per-layer updates exactly. (T5X's own scanned
models factor by logical rules instead, which differ from the heuristic on square
kernels; keeping the heuristic keeps scanned and unscanned training identical.)

Memory levers (not T5X's; off by default, so the T5X-faithful path is unchanged):
``param_dtype="bfloat16"`` stores the parameters in bfloat16 (half the bytes), and
``stochastic_rounding`` rounds each updated parameter to it at random (rounding.py) instead of
to nearest; ``accumulator_dtype="bfloat16"`` has the trainer sum microbatch gradients in bfloat16
(rounded the same way), and ``fused_accumulation`` adds each microbatch's gradient of the scanned
layers into that sum during the backward pass (fused_accumulation.py), so no whole microbatch
gradient is held beside it. Adafactor's arithmetic stays float32 either way: the parameter is read as float32,
updated, and only then stored. ``sliced_update`` computes the same update one parameter at a
time, a stacked parameter one layer at a time and a large matrix in row chunks, in place
(sliced_update.py): the float32 working copies of that arithmetic are then one slice's, where
XLA otherwise keeps several whole parameters' alive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xmtf_pipeline import rounding, sliced_update

PyTree = Any
SLOTS = ("v_row", "v_col", "v", "m")
LAYERS_AXIS = "layers"  # axes.LAYERS; not imported so the optimizer stays model-free


def _path_str(key_path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in key_path)


def _map_with_path(fn, tree: PyTree) -> PyTree:
  return jax.tree_util.tree_map_with_path(lambda kp, x: fn(_path_str(kp), x), tree)


@dataclasses.dataclass(frozen=True)
class Adafactor:
  """T5X's Adafactor hyper-parameters (defaults = T5X = mT5's ``base.gin``).

  The learning rate is supplied per step by the schedule, as in T5X.
  """
  factored: bool = True
  multiply_by_parameter_scale: bool = True
  beta1: float | None = None
  decay_rate: float = 0.8
  step_offset: int = 0
  clipping_threshold: float | None = 1.0
  weight_decay_rate: float | None = None
  min_dim_size_to_factor: int = 128
  epsilon1: float = 1e-30
  epsilon2: float = 1e-3
  max_parameter_scale: float | None = None
  skip_nan_updates: bool = False
  # Storage of the parameters (module docstring): float32 (T5X) or bfloat16.
  param_dtype: str = "float32"
  stochastic_rounding: bool = False
  # Where the trainer sums microbatch gradients (trainer.compute_gradients): float32, or
  # bfloat16 (stochastically rounded with ``stochastic_rounding``).
  accumulator_dtype: str = "float32"
  # Sum the scanned layers' microbatch gradients in place during the backward pass (needs
  # scan_layers and accumulator_dtype == param_dtype; fused_accumulation.py).
  fused_accumulation: bool = False
  # Update parameters in sequence, stacked ones layer by layer (``apply_gradient``).
  sliced_update: bool = False
  # Leading stacked-layer axes per parameter path (see ``for_logical_axes``); not a
  # hyper-parameter, derived from the model.
  batch_dims: Mapping[str, int] | None = dataclasses.field(default=None, compare=False)

  def __post_init__(self):
    for name in ("param_dtype", "accumulator_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16"):
        raise ValueError(f"Adafactor.{name} must be float32 or bfloat16, got "
                         f"{getattr(self, name)!r}.")
    if self.fused_accumulation and self.accumulator_dtype != self.param_dtype:
      raise ValueError("Adafactor.fused_accumulation sums gradients into a buffer of the "
                       f"parameters' dtype: set accumulator_dtype to param_dtype "
                       f"({self.param_dtype!r}), got {self.accumulator_dtype!r}.")

  def store(self, params: PyTree) -> PyTree:
    """Parameters in the storage dtype (round-to-nearest: for initial values, not updates)."""
    return jax.tree_util.tree_map(lambda p: jnp.asarray(p, self.param_dtype), params)

  def for_logical_axes(self, logical_axes: Mapping[str, tuple[str | None, ...]]) -> Adafactor:
    """A copy that treats each parameter's leading ``layers`` axes as batch axes."""
    batch = {}
    for path, names in logical_axes.items():
      n = 0
      while n < len(names) and names[n] == LAYERS_AXIS:
        n += 1
      if LAYERS_AXIS in names[n:]:
        raise ValueError(f"{path}: the '{LAYERS_AXIS}' axis must lead, got axes {names}.")
      if n:
        batch[path] = n
    return dataclasses.replace(self, batch_dims=batch or None)

  def factored_dims(self, shape: tuple[int, ...], num_batch: int = 0) -> tuple[int, int] | None:
    """(d1, d0): the second-largest and largest non-batch axes, or None if not factored."""
    inner = shape[num_batch:]
    if not self.factored or len(inner) < 2:
      return None
    if len(inner) > 2:
      raise ValueError(f"Parameters of rank > 2 need an explicit factor rule; got shape {shape}.")
    order = np.argsort(inner)  # stable: a square kernel factors its first axis as rows
    if inner[order[-2]] < self.min_dim_size_to_factor:
      return None
    return int(order[-2]) + num_batch, int(order[-1]) + num_batch

  def num_batch_dims(self, path: str) -> int:
    return (self.batch_dims or {}).get(path, 0)

  def init_param_state(self, param: jax.Array, num_batch: int = 0) -> dict[str, jax.Array]:
    state = {k: jnp.zeros((1,), jnp.float32) for k in SLOTS}
    dims = self.factored_dims(param.shape, num_batch)
    if dims is not None:
      d1, d0 = dims
      state["v_row"] = jnp.zeros(np.delete(param.shape, d0), jnp.float32)
      state["v_col"] = jnp.zeros(np.delete(param.shape, d1), jnp.float32)
    else:
      state["v"] = jnp.zeros(param.shape, jnp.float32)
    if self.beta1 is not None:
      state["m"] = jnp.zeros(param.shape, jnp.float32)
    return state

  def init(self, params: PyTree) -> dict[str, Any]:
    """``{'step': int32 0, 'param_states': tree of slot dicts}``."""
    param_states = _map_with_path(lambda path, p: self.init_param_state(p, self.num_batch_dims(path)),
                                  params)
    return {"step": jnp.zeros((), jnp.int32), "param_states": param_states}

  def decay(self, step: jax.Array) -> jax.Array:
    """beta2 = 1 - (t + 1)^-decay_rate with t = step - step_offset (T5X)."""
    t = jnp.asarray(step - self.step_offset, jnp.float32) + 1.0
    return 1.0 - t ** (-self.decay_rate)

  def update_param(self, step: jax.Array, lr: jax.Array, param: jax.Array,
                   state: dict[str, jax.Array], grad: jax.Array, num_batch: int = 0,
                   rounding_key: jax.Array | None = None, rounding_offset=0):
    # Means over the non-batch axes, kept as size-1 axes (scalars when num_batch == 0).
    inner = tuple(range(num_batch, param.ndim))

    def mean(x, axis=inner):
      return jnp.mean(x, axis=axis, keepdims=True)

    stored_dtype = param.dtype
    param = param.astype(jnp.float32)  # a no-op for float32 storage (T5X)
    grad = grad.astype(jnp.float32)
    new_state = {k: jnp.zeros((1,), jnp.float32) for k in SLOTS}
    decay_rate = self.decay(step)
    mixing_rate = 1.0 - decay_rate
    update_scale = lr
    if self.multiply_by_parameter_scale:
      param_scale = jnp.maximum(jnp.sqrt(mean(param * param)), self.epsilon2)
      if self.max_parameter_scale is not None:
        param_scale = jnp.minimum(param_scale, self.max_parameter_scale)
      update_scale = update_scale * param_scale
    grad_sqr = grad * grad + self.epsilon1
    dims = self.factored_dims(param.shape, num_batch)
    if dims is not None:
      d1, d0 = dims
      v_row = decay_rate * state["v_row"] + mixing_rate * jnp.mean(grad_sqr, axis=d0)
      v_col = decay_rate * state["v_col"] + mixing_rate * jnp.mean(grad_sqr, axis=d1)
      new_state["v_row"], new_state["v_col"] = v_row, v_col
      row_factor = (v_row / mean(v_row, tuple(range(num_batch, v_row.ndim)))) ** -0.5
      col_factor = v_col ** -0.5
      y = grad * jnp.expand_dims(row_factor, d0) * jnp.expand_dims(col_factor, d1)
    else:
      v = decay_rate * state["v"] + mixing_rate * grad_sqr
      new_state["v"] = v
      y = grad * v ** -0.5
    if self.clipping_threshold is not None:
      y = y / jnp.maximum(1.0, jnp.sqrt(mean(y * y)) / self.clipping_threshold)
    subtrahend = update_scale * y
    if self.beta1 is not None:
      m = self.beta1 * state["m"] + (1.0 - self.beta1) * subtrahend
      subtrahend = m
      new_state["m"] = m
    if self.weight_decay_rate is not None:
      new_param = (1.0 - self.weight_decay_rate) * param - subtrahend
    else:
      new_param = param - subtrahend
    if self.skip_nan_updates:
      new_state = {k: jnp.where(jnp.isnan(new_state[k]), state[k], new_state[k]) for k in SLOTS}
      new_param = jnp.where(jnp.isnan(new_param), param, new_param)
    return rounding.store(new_param, stored_dtype, rounding_key, rounding_offset), new_state

  def slots(self, shape: tuple[int, ...], num_batch: int = 0) -> tuple[str, ...]:
    """The state slots a parameter of ``shape`` uses (the others are (1,) placeholders)."""
    used = ("v_row", "v_col") if self.factored_dims(shape, num_batch) is not None else ("v",)
    return used + (("m",) if self.beta1 is not None else ())

  def apply_gradient(self, params: PyTree, opt_state: dict[str, Any], grads: PyTree,
                     lr: jax.Array, rounding_rng: jax.Array | None = None
                     ) -> tuple[PyTree, dict[str, Any]]:
    """One update of every parameter; ``step`` increments after all of them.

    ``rounding_rng`` (with ``stochastic_rounding``): this step's key; parameter i rounds with
    ``fold_in(rounding_rng, i)``, so a step's rounding depends on the key and the step only.
    """
    step = opt_state["step"]
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    grad_leaves = treedef.flatten_up_to(grads)
    state_leaves = treedef.flatten_up_to(opt_state["param_states"])
    if self.stochastic_rounding and rounding_rng is None:
      raise ValueError("Adafactor.stochastic_rounding needs a rounding_rng per step.")
    keys = [jax.random.fold_in(rounding_rng, i) if self.stochastic_rounding else None
            for i in range(len(path_leaves))]
    if not self.sliced_update:
      out = [self.update_param(step, lr, p, s, g, self.num_batch_dims(_path_str(kp)), k)
             for (kp, p), s, g, k in zip(path_leaves, state_leaves, grad_leaves, keys)]
    else:
      out = sliced_update.apply(self, step, lr, [
          (p, s, g, self.num_batch_dims(_path_str(kp)), k)
          for (kp, p), s, g, k in zip(path_leaves, state_leaves, grad_leaves, keys)])
    new_params = treedef.unflatten([o[0] for o in out])
    new_states = treedef.unflatten([o[1] for o in out])
    return new_params, {"step": step + 1, "param_states": new_states}
