"""``xmtf bench train --profile DIR``: where one step's device time goes.

Traces one step with ``jax.profiler`` (``create_perfetto_trace=True``: a Chrome-trace
JSON, so no profile plugin is needed to read it) and ranks the XLA ops by their own
time. Every op event carries ``args.hlo_op``: kernels on a GPU's streams, thunks on a
CPU's threads. Time is exclusive (nested events count once; loops and calls are
left out, their bodies' ops counted), summed over an op's kernels. Each op is named
with the source location XLA kept for it (``metadata op_name`` of the compiled HLO), e.g.
``transpose(jvp(Transformer))/.../token_embedder``, so a scatter or a slow fusion
says which layer made it.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re

TOP = 15
CONTAINERS = ("while", "conditional", "call")


def _kind(op: str) -> str:
  return re.sub(r"\.\d+$", "", op)


def op_sources(compiled_hlo: str) -> dict[str, str]:
  """HLO instruction name -> its ``op_name`` metadata (the JAX source path)."""
  out = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.-]+) = [^\n]*?metadata=\{[^}]*op_name=\"([^\"]*)\"",
                       compiled_hlo, re.M):
    out.setdefault(m.group(1), m.group(2))
  return out


def _exclusive(events: list[dict]) -> list[tuple[dict, float]]:
  """(event, duration minus its nested events') on one thread."""
  out, stack = [], []  # stack of [end, event, child_time]
  for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
    while stack and e["ts"] >= stack[-1][0]:
      end, ev, child = stack.pop()
      out.append((ev, ev["dur"] - child))
    if stack:
      stack[-1][2] += e["dur"]
    stack.append([e["ts"] + e["dur"], e, 0.0])
  out.extend((ev, ev["dur"] - child) for _, ev, child in stack)
  return out


def top_ops(trace_events: list[dict], sources: dict[str, str] | None = None,
            top: int = TOP) -> dict:
  """The ``top`` ops by exclusive time and their share of all op time.

  Device processes (``/device:...``) are used when they hold op events, else the host's
  (XLA:CPU runs its thunks on host threads).
  """
  names = {e["pid"]: e["args"]["name"] for e in trace_events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  ops = [e for e in trace_events
         if e.get("ph") == "X" and (e.get("args") or {}).get("hlo_op") and "dur" in e]
  device = [e for e in ops if str(names.get(e["pid"], "")).startswith("/device:")]
  # A loop's or call's body runs as ops of its own, on CPUs often on another thread than
  # the loop's event, where nesting cannot subtract it: rank the body's ops, not the loop.
  ops = [e for e in device or ops if _kind(e["args"]["hlo_op"]) not in CONTAINERS]
  by_thread = collections.defaultdict(list)
  for e in ops:
    by_thread[e["pid"], e["tid"]].append(e)
  time_us = collections.Counter()
  calls = collections.Counter()
  for events in by_thread.values():
    for e, t in _exclusive(events):
      time_us[e["args"]["hlo_op"]] += t
      calls[e["args"]["hlo_op"]] += 1
  total = sum(time_us.values())
  sources = sources or {}
  rows = [{"op": op, "kind": _kind(op), "time_us": t, "share": t / total,
           "events": calls[op], "source": sources.get(op, "")}
          for op, t in time_us.most_common(top)]
  kinds = collections.Counter()
  for op, t in time_us.items():
    kinds[_kind(op)] += t
  return {"where": "device" if device else "host", "total_op_time_us": total,
          "ops": len(time_us), "top": rows,
          "top_kinds": [{"kind": k, "time_us": t, "share": t / total}
                        for k, t in kinds.most_common(top)]}


def read_trace(trace_dir: str) -> list[dict]:
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                           recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(paths[-1], "rt") as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def profile_step(run_step, trace_dir: str, compiled_hlo: str = "") -> dict:
  """Traces ``run_step()`` (one step, blocking until done) and ranks its ops."""
  import jax
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    run_step()
  return top_ops(read_trace(trace_dir), op_sources(compiled_hlo))


def _short(source: str, width: int = 90) -> str:
  """The source path without the jit wrapper; fwd/bwd for the model's (transposed) jvp."""
  source = re.sub(r"^jit\([^)]*\)/", "", source)
  source = source.replace("transpose(jvp(Transformer))", "bwd").replace("jvp(Transformer)", "fwd")
  return source if len(source) <= width else "..." + source[-width + 3:]


def profile_table(result: dict, title: str = "") -> str:
  lines = [f"{title}top {len(result['top'])} of {result['ops']} XLA ops by {result['where']} "
           f"time ({result['total_op_time_us'] / 1e3:.1f} ms of op time in the traced step)",
           f"{'share':>7}{'ms':>9}  {'op':<32}source"]
  for r in result["top"]:
    lines.append(f"{r['share']:>7.1%}{r['time_us'] / 1e3:>9.2f}  {r['op'][:31]:<32}"
                 f"{_short(r['source'])}")
  kinds = ", ".join(f"{k['kind']} {k['share']:.0%}" for k in result["top_kinds"][:6])
  lines.append(f"by kind: {kinds}")
  return "\n".join(lines)
