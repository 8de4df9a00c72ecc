"""Logical axis names and the logical -> mesh mapping, in one place.

Every parameter and key activation of the network is annotated with the names
below (as T5X does); partitioning maps them onto the physical mesh axes
``data`` and ``model`` with :func:`standard_logical_axis_rules`, the same table
T5X's ``t5x/partitioning.py`` defines.
"""

from __future__ import annotations

from collections.abc import Sequence

BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
JOINED_KV = "joined_kv"
VOCAB = "vocab"
RELPOS_BUCKETS = "relpos_buckets"
MLP_ACTIVATIONS = "mlp_activations"
# The stacked axis of scanned layers (T5Config.scan_layers); Adafactor treats it as a batch axis.
LAYERS = "layers"

LOGICAL_AXES = (BATCH, LENGTH, EMBED, MLP, HEADS, KV, JOINED_KV, VOCAB,
                RELPOS_BUCKETS, MLP_ACTIVATIONS, LAYERS)

# Physical mesh axes.
DATA = "data"
MODEL = "model"
MESH_AXES = (DATA, MODEL)

AxisRules = Sequence[tuple[str, str | None]]


def standard_logical_axis_rules(activation_partitioning_dims: int = 1,
                                parameter_partitioning_dims: int = 1) -> AxisRules:
  """T5X's standard logical -> mesh rules.

  (1, 1): 1-D model parallelism over heads/mlp/vocab; (2, 1) additionally
  shards activations' ``embed`` over ``model``; (1, 2) shards parameters'
  ``embed`` over ``data`` (fully sharded parameters, ZeRO-3 like).
  """
  if activation_partitioning_dims not in (1, 2) or parameter_partitioning_dims not in (1, 2):
    raise ValueError(
        "activation_partitioning_dims and parameter_partitioning_dims must be 1 or 2, got "
        f"{activation_partitioning_dims} and {parameter_partitioning_dims}.")
  if activation_partitioning_dims == 2 and parameter_partitioning_dims == 2:
    rules = [(BATCH, DATA), (VOCAB, MODEL), (EMBED, MODEL), (EMBED, DATA)]
  elif activation_partitioning_dims == 2:
    rules = [(BATCH, DATA), (VOCAB, MODEL), (EMBED, MODEL)]
  elif parameter_partitioning_dims == 2:
    rules = [(BATCH, DATA), (VOCAB, MODEL), (EMBED, DATA)]
  else:
    rules = [(BATCH, DATA), (VOCAB, MODEL)]
  rules += [
      (MLP, MODEL),
      (HEADS, MODEL),
      (KV, None),
      (JOINED_KV, MODEL),
      # Always replicated.
      (RELPOS_BUCKETS, None),
      ("abspos_buckets", None),
      (LENGTH, None),
      (LAYERS, None),
      ("stack", None),
      (MLP_ACTIVATIONS, None),
  ]
  return tuple(rules)
