"""Scanned layers in memory, T5X's per-layer names on disk.

With ``T5Config.scan_layers`` every ``{encoder,decoder}/layers_<i>/...`` parameter
lives stacked as ``{encoder,decoder}/layers/...`` with a leading layer axis, and so
do its Adafactor slots. Checkpoints, HF/T5X import and export keep the unscanned
layout, so a run can switch ``scan_layers`` between restarts and every other tool
reads its checkpoints unchanged; the trainer converts at those boundaries.

An unused Adafactor slot is a float32 ``(1,)`` placeholder in both layouts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import traverse_util

from xmtf_pipeline.network import T5Config

PyTree = Any
_PER_LAYER = re.compile(r"^(.*?)(encoder|decoder)/layers_(\d+)/(.*)$")
_STACKED = re.compile(r"^(.*?)(encoder|decoder)/layers/(.*)$")
_SLOTS = ("v_row", "v_col", "v", "m")


def _is_placeholder(path: str, x) -> bool:
  return path.rsplit("/", 1)[-1] in _SLOTS and tuple(x.shape) == (1,)


def _flat(tree: Mapping[str, Any]) -> dict[str, Any]:
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def stack(tree: Mapping[str, Any], config: T5Config) -> dict[str, Any]:
  """Per-layer tree (params, or a whole train state dict) -> stacked layout."""
  out, groups = {}, {}
  for path, x in _flat(tree).items():
    m = _PER_LAYER.match(path)
    if m is None:
      out[path] = x
      continue
    prefix, stack_name, index, rest = m.groups()
    groups.setdefault(f"{prefix}{stack_name}/layers/{rest}", {})[int(index)] = x
  for path, per_layer in groups.items():
    stack_name = _STACKED.match(path).group(2)
    n = config.num_encoder_layers if stack_name == "encoder" else config.num_decoder_layers
    if sorted(per_layer) != list(range(n)):
      raise ValueError(f"{path}: expected layers 0..{n - 1} to stack, found {sorted(per_layer)}.")
    leaves = [per_layer[i] for i in range(n)]
    if all(_is_placeholder(path, x) for x in leaves):
      out[path] = leaves[0]
    else:
      out[path] = jnp.stack(leaves)
  return _nest(out)


def unstack(tree: Mapping[str, Any], config: T5Config) -> dict[str, Any]:
  """Stacked tree -> T5X's per-layer layout."""
  out = {}
  for path, x in _flat(tree).items():
    m = _STACKED.match(path)
    if m is None:
      out[path] = x
      continue
    prefix, stack_name, rest = m.groups()
    n = config.num_encoder_layers if stack_name == "encoder" else config.num_decoder_layers
    placeholder = _is_placeholder(path, x)
    if not placeholder and x.shape[0] != n:
      raise ValueError(f"{path}: leading axis {x.shape[0]} is not the {n} {stack_name} layers.")
    for i in range(n):
      out[f"{prefix}{stack_name}/layers_{i}/{rest}"] = x if placeholder else x[i]
  return _nest(out)
