"""The train state and the train/eval steps as small pure functions.

The state's tree is T5X's checkpoint layout: ``{'target': params, 'state':
{'step', 'param_states'}}``, so checkpoints map one-to-one onto T5X's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from xmtf_pipeline import fused_accumulation, rounding
from xmtf_pipeline import params as params_lib
from xmtf_pipeline.adafactor import Adafactor
from xmtf_pipeline.models import EncoderDecoderModel

PyTree = Any
Batch = Mapping[str, jax.Array]
ROUNDING_STREAM = 0x5352  # stochastic rounding's keys: fold_in(fold_in(rng, this), step)
ACCUMULATOR_STREAM = 0x4143  # the bf16 accumulator's: fold_in(that step key, this)


@flax.struct.dataclass
class TrainState:
  params: PyTree
  opt_state: dict[str, Any]  # {'step': int32, 'param_states': tree of slot dicts}

  @property
  def step(self) -> jax.Array:
    return self.opt_state["step"]

  @classmethod
  def create(cls, params: PyTree, optimizer: Adafactor) -> TrainState:
    params = optimizer.store(params)
    return cls(params=params, opt_state=optimizer.init(params))

  def state_dict(self) -> dict[str, Any]:
    return {"target": self.params, "state": self.opt_state}

  @classmethod
  def from_state_dict(cls, d: Mapping[str, Any]) -> TrainState:
    return cls(params=d["target"], opt_state=d["state"])


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"Batch of {x.shape[0]} does not split into {num_microbatches} "
                       "microbatches; choose a divisor of the per-host batch size.")
    return x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:])
  return {k: split(v) for k, v in batch.items()}


def compute_gradients(model: EncoderDecoderModel, params: PyTree, batch: Batch,
                      dropout_rng: jax.Array | None, num_microbatches: int = 1,
                      accumulator_dtype: str = "float32",
                      rounding_rng: jax.Array | None = None, fused: bool = False):
  """Gradients of the batch loss and summed statistics.

  The normalizing factor and the per-token weights are computed on the whole
  batch first, so summing microbatch gradients gives exactly the one-batch
  gradient (T5X normalizes each microbatch alone, which agrees only when
  microbatches hold equal token counts). Microbatch gradients are summed in
  ``accumulator_dtype``: float32 (default), or bfloat16, each sum computed in float32 and
  stochastically rounded with ``fold_in(fold_in(rounding_rng, microbatch), parameter)``
  (round-to-nearest without a key). ``fused`` adds the scanned layers' gradients into the sum
  inside the backward pass (fused_accumulation.py): the same sums, without a microbatch
  gradient of the layers beside them.
  """
  normalizer, weights = model.normalizer_and_weights(batch)
  batch = dict(batch)
  if weights is not None:
    batch["decoder_loss_weights"] = weights
  grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
  if num_microbatches <= 1:
    (_, stats), grads = grad_fn(params, batch, dropout_rng, normalizer)
    return grads, stats
  if fused and not model.config.scan_layers:
    raise ValueError("Adafactor.fused_accumulation fuses into the scanned layer stack: set "
                     "T5Config.scan_layers = True (or turn fused_accumulation off).")

  micro = _split_microbatches(batch, num_microbatches)
  rngs = (jax.random.split(dropout_rng, num_microbatches) if dropout_rng is not None
          else jnp.zeros((num_microbatches, 2), jnp.uint32))
  leaves, treedef = jax.tree_util.tree_flatten(params)
  stacked = [fused and fused_accumulation.is_stacked(path)
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]

  def leaf_keys(index):
    if rounding_rng is None or accumulator_dtype == "float32":
      return [None] * len(leaves)
    key = jax.random.fold_in(rounding_rng, index)
    return [jax.random.fold_in(key, i) for i in range(len(leaves))]

  def add(total, grad, key):
    if accumulator_dtype == "float32":
      return total + grad
    return rounding.store(total.astype(jnp.float32) + grad.astype(jnp.float32),
                          accumulator_dtype, key)

  def body(carry, xs):
    mb, rng, index = xs
    acc_grads, acc_stats = carry
    keys = leaf_keys(index)
    # The running sums go in as variable collections only on the fused path, so a model
    # whose loss_fn has no ``accumulators`` argument still accumulates the plain way.
    fused_sums = () if not fused else (fused_accumulation.collections(
        acc_grads, None if keys[0] is None else treedef.unflatten(keys)),)
    (_, stats), grads = grad_fn(params, mb, rng if dropout_rng is not None else None,
                                normalizer, *fused_sums)
    # A fused leaf's "gradient" already is the running sum with this microbatch added.
    out = [g if s else add(a, g, k) for a, g, k, s in
           zip(treedef.flatten_up_to(acc_grads), treedef.flatten_up_to(grads), keys, stacked)]
    return (treedef.unflatten(out), jax.tree_util.tree_map(jnp.add, acc_stats, stats)), None

  # float32 unless asked: 128 bfloat16 round-to-nearest sums would drift.
  zero_grads = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, accumulator_dtype), params)
  stats_shape = jax.eval_shape(lambda: grad_fn(params, jax.tree_util.tree_map(lambda x: x[0], micro),
                                               None, normalizer)[0][1])
  zero_stats = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), stats_shape)
  (grads, stats), _ = jax.lax.scan(body, (zero_grads, zero_stats),
                                  (micro, rngs, jnp.arange(num_microbatches)))
  return grads, stats


def train_step(model: EncoderDecoderModel, optimizer: Adafactor, learning_rate_fn: Callable,
               num_microbatches: int, state: TrainState, batch: Batch, rng: jax.Array,
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step. Dropout RNG = fold_in(rng, step), as ``t5x/trainer.py``.

  For a scanned model pass ``optimizer_for(model, optimizer)`` (jit_train_step does).
  """
  step = state.step
  dropout_rng = None
  if model.config.dropout_rate > 0.0:
    dropout_rng = jax.random.fold_in(rng, step)
  rounding_rng = None
  if optimizer.stochastic_rounding:  # from the run's seed (saved in checkpoints) and the step
    rounding_rng = jax.random.fold_in(jax.random.fold_in(rng, ROUNDING_STREAM), step)
  grads, stats = compute_gradients(
      model, state.params, batch, dropout_rng, num_microbatches, optimizer.accumulator_dtype,
      None if rounding_rng is None else jax.random.fold_in(rounding_rng, ACCUMULATOR_STREAM),
      optimizer.fused_accumulation)
  lr = learning_rate_fn(step)
  params, opt_state = optimizer.apply_gradient(state.params, state.opt_state, grads, lr,
                                               rounding_rng)
  stats = dict(stats, learning_rate=lr, nonfinite=~jnp.isfinite(stats["loss"]))
  return TrainState(params=params, opt_state=opt_state), stats


@jax.jit
def _finite_leaves(tree: PyTree) -> PyTree:
  def finite(x):
    return jnp.isfinite(x).all() if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
  return jax.tree_util.tree_map(finite, tree)


def nonfinite_leaves(tree: PyTree) -> list[str]:
  """Paths (``target/encoder/...``) of the arrays holding NaN or Inf, parameters first.

  One on-device reduction per array, so only one bool per array crosses to the host; the
  check costs a read of the state, far less than writing it.
  """
  flags = jax.device_get(_finite_leaves(tree))
  bad = ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
         for path, ok in jax.tree_util.tree_flatten_with_path(flags)[0] if not ok]
  return sorted(bad, key=lambda name: (not name.startswith("target/"), name))


def eval_step(model: EncoderDecoderModel, params: PyTree, batch: Batch) -> dict[str, jax.Array]:
  """Teacher-forced loss statistics with the training objective, no dropout."""
  normalizer, weights = model.normalizer_and_weights(batch)
  batch = dict(batch)
  if weights is not None:
    batch["decoder_loss_weights"] = weights
  _, stats = model.loss_fn(params, batch, None, normalizer)
  return stats


def optimizer_for(model: EncoderDecoderModel, optimizer: Adafactor) -> Adafactor:
  """The optimizer told which parameter axes are stacked layers (scanned models)."""
  if not model.config.scan_layers:
    return optimizer
  return optimizer.for_logical_axes(params_lib.logical_axes(model.config))


def state_shardings(config, optimizer: Adafactor, partitioner) -> dict[str, Any]:
  """Shardings of the train state dict of ``config`` (no allocation)."""
  return jax.tree_util.tree_map(lambda x: x.sharding,
                                abstract_state(config, optimizer, partitioner))


def abstract_state(config, optimizer: Adafactor, partitioner) -> dict[str, Any]:
  """The train state dict as sharded ``ShapeDtypeStruct``s (a restore target)."""
  boxed = params_lib.abstract_variables(config)["params"]
  target = jax.eval_shape(optimizer.store, nn.unbox(boxed))
  shapes = {"target": target, "state": jax.eval_shape(optimizer.init, target)}
  shardings = partitioner.state_shardings(boxed, shapes["state"])
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                shapes, shardings)


def init_state(model: EncoderDecoderModel, optimizer: Adafactor, partitioner,
               rng: jax.Array) -> tuple[TrainState, dict[str, Any]]:
  """The initial train state, created directly in its sharded layout, and its shardings."""
  optimizer = optimizer_for(model, optimizer)
  shardings = state_shardings(model.config, optimizer, partitioner)

  def create(r):
    return TrainState.create(params_lib.init_params(model.config, r), optimizer).state_dict()

  state_dict = partitioner.partition(create, partitioner.replicated, shardings)(rng)
  return TrainState.from_state_dict(state_dict), shardings


def jit_train_step(model, optimizer, learning_rate_fn, num_microbatches=1, partitioner=None,
                   state_shardings=None):
  """The jitted step; the state's buffers are donated (updated in place).

  With a partitioner, the state and batches follow its shardings (GSPMD).
  """
  optimizer = optimizer_for(model, optimizer)
  fn = functools.partial(train_step, model, optimizer, learning_rate_fn, num_microbatches)
  if partitioner is None:
    return jax.jit(fn, donate_argnums=(0,))
  state_sh = TrainState.from_state_dict(state_shardings)
  return partitioner.partition(
      fn, (state_sh, partitioner.batch_sharding, partitioner.replicated),
      (state_sh, partitioner.replicated), donate_argnums=(0,))


def jit_eval_step(model, partitioner=None, param_shardings=None):
  fn = functools.partial(eval_step, model)
  if partitioner is None:
    return jax.jit(fn)
  return partitioner.partition(fn, (param_shardings, partitioner.batch_sharding),
                               partitioner.replicated)
