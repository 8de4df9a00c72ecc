"""Parameter trees: shapes without allocation, counts, tables, and validation.

Paths are T5X's slash-joined names (``encoder/layers_0/attention/query/kernel``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from xmtf_pipeline.network import T5Config, Transformer

PyTree = Any


class ParamMismatchError(ValueError):
  """A parameter tree that does not fit the model config."""


def _dummy_batch(length: int = 1):
  tokens = jnp.ones((1, length), jnp.int32)
  return tokens, tokens, tokens


def init_params(config: T5Config, rng: jax.Array) -> PyTree:
  """Freshly initialised float32 parameters (unboxed, no axis metadata)."""
  variables = Transformer(config).init(rng, *_dummy_batch())
  return nn.unbox(variables["params"])


def abstract_variables(config: T5Config) -> PyTree:
  """Boxed ``ShapeDtypeStruct`` variables via ``jax.eval_shape``: nothing is allocated."""
  return jax.eval_shape(Transformer(config).init, jax.random.PRNGKey(0), *_dummy_batch())


def param_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
  abstract = nn.unbox(abstract_variables(config)["params"])
  return {path: tuple(x.shape) for path, x in flatten(abstract).items()}


def logical_axes(config: T5Config) -> dict[str, tuple[str | None, ...]]:
  """Each parameter's logical axis names, from the module's own annotations."""
  specs = nn.get_partition_spec(abstract_variables(config)["params"])
  return {path: tuple(spec) for path, spec in flatten(specs).items()}


def count(config: T5Config) -> int:
  return sum(int(np.prod(s)) for s in param_shapes(config).values())


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def param_table(config: T5Config) -> str:
  """A fixed-width table of every parameter: path, shape, logical axes, size."""
  shapes = param_shapes(config)
  names = logical_axes(config)
  width = max(len(p) for p in shapes)
  lines = [f"{'parameter':<{width}}  {'shape':<16}  {'logical axes':<26}  {'count':>14}"]
  for path in sorted(shapes):
    shape = shapes[path]
    lines.append(f"{path:<{width}}  {str(shape):<16}  {str(names[path]):<26}  "
                 f"{int(np.prod(shape)):>14,}")
  total = sum(int(np.prod(s)) for s in shapes.values())
  lines.append(f"{'total (' + str(len(shapes)) + ' arrays)':<{width}}  {'':<16}  {'':<26}  "
               f"{total:>14,}")
  return "\n".join(lines)


def check_params(params: PyTree, config: T5Config, source: str = "parameters") -> None:
  """Raises ParamMismatchError naming the first missing, extra or mis-shaped path."""
  expected = param_shapes(config)
  got = {p: tuple(v.shape) if hasattr(v, "shape") else np.shape(v)
         for p, v in flatten(params).items()}
  for path in sorted(set(expected) | set(got)):
    if path not in got:
      raise ParamMismatchError(
          f"{source}: missing parameter {path} (expected shape {expected[path]}); "
          "is this a checkpoint of the same architecture?")
    if path not in expected:
      raise ParamMismatchError(
          f"{source}: unexpected parameter {path} with shape {got[path]}; the model config has "
          "no such parameter (another number of layers?).")
    if got[path] != expected[path]:
      raise ParamMismatchError(
          f"{source}: parameter {path} has shape {got[path]} but the model config expects "
          f"{expected[path]}; the checkpoint is for another model size or vocabulary.")
