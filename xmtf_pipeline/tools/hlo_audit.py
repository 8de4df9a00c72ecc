"""The scatters in a lowered JAX program, and how many updates may meet on one row.

A scatter-add is the one op whose GPU cost no CPU timing shows (issue 13): XLA:GPU
adds float32 with native atomics, but bf16/f16 with a compare-and-swap retry loop,
and updates that meet on one output row serialise. Gathers (``jnp.take``) are the
usual source: their gradient is a scatter-add.

Read from the lowered StableHLO (``jit(f).lower(...).as_text()``), not the compiled
HLO: lowering is what JAX hands every backend, it takes seconds, and XLA does not
remove a gradient's scatter-add (on CPU it only canonicalises and merges them),
whereas compiled HLO is one backend's rewrite and took minutes to get here.
"""

from __future__ import annotations

import dataclasses
import math
import re

LOW_PRECISION = ("bf16", "f16")
_TENSOR = re.compile(r"tensor<([0-9x]*)([a-z][a-z0-9]*)>")


@dataclasses.dataclass(frozen=True)
class Scatter:
  operand_shape: tuple[int, ...]
  dtype: str  # StableHLO element type: f32, bf16, ...
  updates: int  # update slices (index tuples)
  # The most updates that can land on one operand row: the slices, divided among the
  # batching dimensions that keep them apart. Indices are data, so any row (the
  # padding id's, say) may receive all of them.
  max_per_row: int

  def __str__(self) -> str:
    shape = "x".join(map(str, self.operand_shape))
    return (f"scatter into {shape} {self.dtype}: {self.updates} updates, up to "
            f"{self.max_per_row} per row")


def _dims(text: str, name: str) -> list[int]:
  m = re.search(rf"{name} = \[([0-9, ]*)\]", text)
  return [int(x) for x in m.group(1).split(",") if x.strip()] if m else []


def _tensor(text: str) -> tuple[tuple[int, ...], str]:
  m = _TENSOR.fullmatch(text.strip())
  if not m:
    raise ValueError(f"not a ranked tensor type: {text!r}")
  dims = tuple(int(d) for d in m.group(1).split("x") if d)
  return dims, m.group(2)


def scatters(stablehlo: str) -> list[Scatter]:
  """Every ``stablehlo.scatter`` in a module's text."""
  found = []
  for m in re.finditer(r'"stablehlo\.scatter"\(', stablehlo):
    head = stablehlo[m.end():]
    numbers = re.search(r"scatter_dimension_numbers = #stablehlo\.scatter<([^>]*)>", head)
    # The op's signature follows its update region: "}) : (operand, indices, updates) ->".
    sig = re.search(r"\}\) : \(([^)]*)\) ->", head)
    if numbers is None or sig is None:
      raise ValueError(f"unparsed scatter near: {head[:300]!r}")
    types = _TENSOR.findall(sig.group(1))
    if len(types) != 3:  # variadic scatters are not emitted by anything here
      raise ValueError(f"expected (operand, indices, updates), got {sig.group(1)!r}")
    (operand, dtype), _, (updates, _) = (_tensor(f"tensor<{d}{t}>") for d, t in types)
    window = set(_dims(numbers.group(1), "update_window_dims"))
    n_updates = math.prod(d for i, d in enumerate(updates) if i not in window)
    batching = math.prod(operand[i] for i in _dims(numbers.group(1), "input_batching_dims"))
    found.append(Scatter(operand, dtype, n_updates, max(1, n_updates // max(batching, 1))))
  return found


def violations(found: list[Scatter], max_per_row: int,
               allowed: dict[tuple[int, ...], str]) -> list[str]:
  """Low-precision scatters (never allowed) and ones over ``max_per_row`` not in
  ``allowed`` (operand shape -> the reason it is acceptable)."""
  bad = []
  for s in found:
    if s.dtype in LOW_PRECISION:
      bad.append(f"{s}: {s.dtype} scatter-add (a compare-and-swap loop on GPUs, rounded "
                 "at every add)")
    elif s.max_per_row > max_per_row and s.operand_shape not in allowed:
      bad.append(f"{s}: more than {max_per_row} per row, and not allowed")
  return bad
