"""GSPMD partitioning on ``jax.sharding``: a (data, model) mesh and T5X's logical rules.

The network annotates every parameter and key activation with logical axis
names (``axes``); this module maps them onto the mesh with one rules table
(``axes.standard_logical_axis_rules``) and derives the shardings of the train
state (Adafactor's factored slots replicated, full slots like their parameter,
as T5X's ``derive_logical_axes``) and of batches (split over ``data``).
"""

from __future__ import annotations

import dataclasses
import functools
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
  """T5X's PjitPartitioner: the knobs, the mesh they make, and ``partition`` for any function.

  ``num_partitions``: model-parallel size (the ``model`` mesh axis); data takes the
  rest. ``model_parallel_submesh``: a (x, y, z, core) tile instead, whose product
  is the model-parallel size (mutually exclusive). ``parameter_partitioning_dims=2``
  shards parameters and optimizer state over ``data`` as well (fully sharded).
  ``devices``: the mesh's devices, every visible one by default (``with_devices`` makes
  a partitioner over fewer, e.g. for ``xmtf plan``).
  """
  num_partitions: int | None = 1
  model_parallel_submesh: tuple[int, int, int, int] | None = None
  activation_partitioning_dims: int = 1
  parameter_partitioning_dims: int = 1
  logical_axis_rules: Sequence[tuple[str, str | None]] | None = None
  devices: tuple[Any, ...] | None = None

  def __post_init__(self):
    if self.num_partitions not in (None, 1) and self.model_parallel_submesh is not None:
      raise PartitioningError("Set num_partitions or model_parallel_submesh, not both (T5X).")

  def with_devices(self, devices: Sequence[Any]) -> Partitioner:
    return dataclasses.replace(self, devices=tuple(devices))

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

  @functools.cached_property
  def mesh(self) -> Mesh:
    """The (data, model) mesh over ``devices``, made once."""
    devices = list(jax.devices() if self.devices is None else self.devices)
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

  @property
  def data_parallel_size(self) -> int:
    return self.mesh.shape[axes.DATA]

  def describe(self) -> str:
    """``mesh data=4 model=2 on 8 devices, 1 process``: what the logs say."""
    shape = " ".join(f"{name}={size}" for name, size in self.mesh.shape.items())
    devices, processes = self.mesh.devices.size, jax.process_count()
    return (f"mesh {shape} on {devices} device{'s' * (devices > 1)}, {processes} "
            f"process{'es' * (processes > 1)}")

  def logical_to_sharding(self, logical: PyTree) -> PyTree:
    """PartitionSpecs of logical names -> NamedShardings under the rules."""
    return nn.logical_to_mesh_sharding(logical, self.mesh, self.rules)

  def param_shardings(self, boxed_params: PyTree) -> PyTree:
    return self.logical_to_sharding(nn.get_partition_spec(boxed_params))

  def state_shardings(self, boxed_params: PyTree, opt_state: PyTree) -> dict:
    """Shardings of ``{'target', 'state'}`` (T5X's optimizer logical axes)."""
    param_sh = self.param_shardings(boxed_params)
    replicated = self.replicated

    def slots(sharding, slot_state):
      return {k: (sharding if k in ("v", "m") and v.shape != (1,) else replicated)
              for k, v in slot_state.items()}

    treedef = jax.tree_util.tree_structure(param_sh)
    param_states = treedef.unflatten([
        slots(s, st) for s, st in zip(jax.tree_util.tree_leaves(param_sh),
                                      treedef.flatten_up_to(opt_state["param_states"]))])
    return {"target": param_sh, "state": {"step": replicated, "param_states": param_states}}

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P(axes.DATA))

  def shard_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A global batch assembled from this process's rows (each process reads its shard)."""
    sharding = self.batch_sharding
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}

  def shard_global_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A batch every process holds whole (eval and infer plan the same batches everywhere) as
    global arrays, each process giving only its own devices' rows."""
    count, index = jax.process_count(), jax.process_index()
    rows = len(next(iter(batch.values())))
    return self.shard_batch({k: v[index * rows // count:(index + 1) * rows // count]
                             for k, v in batch.items()})

  def data_layout(self) -> tuple[int, int]:
    """(shard_id, num_shards) of this process's input: one shard per process.

    This assumes the ``model`` axis stays within a host (T5X's advice on GPU).
    """
    return jax.process_index(), jax.process_count()

  def partition(self, fn, in_shardings: PyTree, out_shardings: PyTree,
                static_argnums: int | Sequence[int] = (),
                donate_argnums: int | Sequence[int] = ()):
    """``fn`` jitted with these shardings, traced and run under the mesh and the rules (so
    the network's activation constraints resolve); ``.lower(*args)`` lowers it the same way
    (``xmtf plan``'s compiled figure)."""
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                     static_argnums=static_argnums, donate_argnums=donate_argnums)
    mesh, rules = self.mesh, self.rules

    def partitioned(*args):
      with mesh, nn.logical_axis_rules(rules):
        return jitted(*args)

    def lower(*args):
      with mesh, nn.logical_axis_rules(rules):
        return jitted.lower(*args)
    partitioned.lower = lower
    return partitioned
