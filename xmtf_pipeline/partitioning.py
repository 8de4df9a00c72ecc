"""GSPMD partitioning on ``jax.sharding``: a (data, model) mesh and T5X's logical rules.

The network annotates every parameter and key activation with logical axis
names (``axes``); this module maps them onto the mesh with one rules table
(``axes.standard_logical_axis_rules``) and derives the shardings of the train
state (Adafactor's factored slots replicated, full slots like their parameter,
as T5X's ``derive_logical_axes``) and of batches (split over ``data``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from xmtf_pipeline import axes

PyTree = Any


class PartitioningError(ValueError):
  """A mesh or rules table that cannot work on these devices."""


@dataclasses.dataclass(frozen=True)
class Partitioner:
  """T5X's PjitPartitioner knobs.

  ``num_partitions``: model-parallel size (the ``model`` mesh axis); data takes the
  rest. ``model_parallel_submesh``: a (x, y, z, core) tile instead, whose product
  is the model-parallel size (mutually exclusive). ``parameter_partitioning_dims=2``
  shards parameters and optimizer state over ``data`` as well (fully sharded).
  """
  num_partitions: int | None = 1
  model_parallel_submesh: tuple[int, int, int, int] | None = None
  activation_partitioning_dims: int = 1
  parameter_partitioning_dims: int = 1
  logical_axis_rules: Sequence[tuple[str, str | None]] | None = None

  def __post_init__(self):
    if self.num_partitions not in (None, 1) and self.model_parallel_submesh is not None:
      raise PartitioningError("Set num_partitions or model_parallel_submesh, not both (T5X).")

  @property
  def model_parallel_size(self) -> int:
    if self.model_parallel_submesh is not None:
      return int(np.prod(self.model_parallel_submesh))
    return int(self.num_partitions or 1)

  @property
  def rules(self) -> tuple[tuple[str, str | None], ...]:
    rules = tuple(self.logical_axis_rules) if self.logical_axis_rules is not None else \
        axes.standard_logical_axis_rules(self.activation_partitioning_dims,
                                         self.parameter_partitioning_dims)
    for logical, mesh_axis in rules:
      if mesh_axis is not None and mesh_axis not in axes.MESH_AXES:
        raise PartitioningError(
            f"Logical axis rule ({logical!r}, {mesh_axis!r}) names an unknown mesh axis; "
            f"mesh axes are {axes.MESH_AXES}.")
    return rules

  def mesh(self, devices: Sequence[Any] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    n, mp = len(devices), self.model_parallel_size
    if mp <= 0 or n % mp:
      raise PartitioningError(
          f"Model-parallel size {mp} does not divide the {n} devices; choose num_partitions "
          f"(or a model_parallel_submesh) among the divisors of {n}.")
    try:
      grid = mesh_utils.create_device_mesh((n // mp, mp), devices)
    except Exception:  # CPU/GPU without a physical topology: keep the device order
      grid = np.asarray(devices, dtype=object).reshape(n // mp, mp)
    return Mesh(grid, axes.MESH_AXES)

  def data_parallel_size(self, mesh: Mesh) -> int:
    return mesh.shape[axes.DATA]

  def logical_to_sharding(self, mesh: Mesh, logical: PyTree) -> PyTree:
    """PartitionSpecs of logical names -> NamedShardings under the rules."""
    return nn.logical_to_mesh_sharding(logical, mesh, self.rules)

  def param_shardings(self, mesh: Mesh, boxed_params: PyTree) -> PyTree:
    return self.logical_to_sharding(mesh, nn.get_partition_spec(boxed_params))

  def state_shardings(self, mesh: Mesh, boxed_params: PyTree, opt_state: PyTree) -> dict:
    """Shardings of ``{'target', 'state'}`` (T5X's optimizer logical axes)."""
    param_sh = self.param_shardings(mesh, boxed_params)
    replicated = NamedSharding(mesh, P())

    def slots(sharding, slot_state):
      return {k: (sharding if k in ("v", "m") and v.shape != (1,) else replicated)
              for k, v in slot_state.items()}

    treedef = jax.tree_util.tree_structure(param_sh)
    param_states = treedef.unflatten([
        slots(s, st) for s, st in zip(jax.tree_util.tree_leaves(param_sh),
                                      treedef.flatten_up_to(opt_state["param_states"]))])
    return {"target": param_sh, "state": {"step": replicated, "param_states": param_states}}

  def batch_sharding(self, mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(axes.DATA))

  def shard_batch(self, mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A global batch assembled from this process's rows (each process reads its shard)."""
    sharding = self.batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}

  def data_layout(self) -> tuple[int, int]:
    """(shard_id, num_shards) of this process's input: one shard per process.

    This assumes the ``model`` axis stays within a host (T5X's advice on GPU).
    """
    return jax.process_index(), jax.process_count()

  def jit_train_step(self, mesh: Mesh, step_fn, state_shardings: PyTree):
    """``step_fn(state, batch, rng)`` jitted with the state sharded and donated."""
    from xmtf_pipeline.trainer import TrainState  # the state's pytree type
    state_sh = TrainState.from_state_dict(state_shardings)
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(step_fn, in_shardings=(state_sh, self.batch_sharding(mesh), replicated),
                     out_shardings=(state_sh, replicated), donate_argnums=(0,))
    return self._in_context(mesh, jitted)

  def jit_eval_step(self, mesh: Mesh, eval_fn, param_shardings: PyTree):
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(eval_fn, in_shardings=(param_shardings, self.batch_sharding(mesh)),
                     out_shardings=replicated)
    return self._in_context(mesh, jitted)

  def _in_context(self, mesh: Mesh, fn):
    """Runs ``fn`` under the mesh and rules, so activation constraints resolve."""
    rules = self.rules

    def wrapped(*args):
      with mesh, nn.logical_axis_rules(rules):
        return fn(*args)

    def lower(*args):  # AOT: lower with abstract inputs (xmtf plan's compiled figure)
      with mesh, nn.logical_axis_rules(rules):
        return fn.lower(*args)
    wrapped.lower = lower
    return wrapped
