"""``xmtf bench data`` times the data pipeline (read + tokenize + convert, unpacked and packed;
``tasks.bench_preprocessing.measure``) in subprocesses pinned to 1 core and to all cores (CPU
affinity and TF intra/inter-op threads), reports examples/s per core, and the cores needed to
feed a GPU step consuming ``--gpu-examples-per-s`` rows/s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence

from xmtf_pipeline.tools.bench_packing import (
  DEFAULT_GPU_EXAMPLES_PER_S,
  DEFAULT_LENGTHS,
  BenchInputError,
  fmt_lengths,
  packing_report,
  parse_lengths,
  quiet_tf,
  task_examples,
  write_json,
)


def _parse_cores(text: str) -> list[int]:
  available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  out = []
  for part in text.split(","):
    part = part.strip()
    try:
      n = available if part == "all" else int(part)
    except ValueError:
      raise BenchInputError(f"--cores {text!r}: write core counts like 1,2 or 1,all.") from None
    if not 1 <= n <= available:
      raise BenchInputError(f"--cores {text!r}: {n} is not between 1 and the {available} cores "
                            "this process may use.")
    if n not in out:
      out.append(n)
  return out


def _data_child(cores: int, task: str, lengths: str, examples: int, packed_examples: int,
                batch: int, seed: int) -> int:
  """One measurement in this process: pinned to ``cores`` CPUs, TF limited to as many threads."""
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
  quiet_tf()
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(cores)  # before any TF op runs
  tf.config.threading.set_inter_op_parallelism_threads(cores)
  tf.config.set_visible_devices([], "GPU")
  from xmtf_pipeline.tools.data_inspect import _import_tasks
  _import_tasks(())
  from tasks.bench_preprocessing import measure

  lens = parse_lengths(lengths)
  out = {"cores": cores}
  for label, pack, count in (("unpacked", False, examples), ("packed", True, packed_examples)):
    rate, n = measure(task, lens, count, batch, pack, seed)
    out[label] = {"examples_per_s": rate, "examples": n}
  print("DATAJSON:" + json.dumps(out))
  return 0


def _measure(cores: Sequence[int], args, packed_examples: int) -> list[dict] | None:
  """One fresh process per core count (TF's thread pools are fixed at its first op)."""
  runs = []
  for n in cores:
    cmd = [sys.executable, "-m", "xmtf_pipeline.tools.bench_data", "--_child", str(n),
           "--task", args.task, "--lengths", args.lengths, "--examples", str(args.examples),
           "--_packed_examples", str(packed_examples), "--batch", str(args.batch),
           "--seed", str(args.seed)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    line = [x for x in proc.stdout.splitlines() if x.startswith("DATAJSON:")]
    if proc.returncode or not line:
      print(f"xmtf bench data: error: the {n}-core measurement failed:\n{proc.stderr[-3000:]}",
            file=sys.stderr)
      return None
    r = json.loads(line[0][len("DATAJSON:"):])
    r["wall_s"] = time.perf_counter() - t
    runs.append(r)
    print(f"  {n} core(s): unpacked {r['unpacked']['examples_per_s']:,.0f} ex/s "
          f"({r['unpacked']['examples_per_s'] / n:,.0f} per core), packed "
          f"{r['packed']['examples_per_s']:,.0f} ex/s ({r['packed']['examples_per_s'] / n:,.0f} "
          "per core)", flush=True)
  return runs


def main_data(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(
      prog="xmtf bench data",
      description="Data pipeline (read + tokenize + convert/pack) examples/s per core vs a GPU.")
  p.add_argument("--task", default="xp3_sample", help="task or mixture (default xp3_sample)")
  p.add_argument("--lengths", default=DEFAULT_LENGTHS, help=f"default {DEFAULT_LENGTHS}")
  p.add_argument("--examples", type=int, default=10_000, help="examples timed per setting")
  p.add_argument("--batch", type=int, default=32, help="rows per batch, as the trainer batches")
  p.add_argument("--cores", default="1,all",
                 help="core counts to measure, comma separated ('all' = every usable core); "
                      "default 1,all")
  p.add_argument("--gpu-examples-per-s", type=float, default=DEFAULT_GPU_EXAMPLES_PER_S,
                 help="rows/s the GPU step consumes, unpacked examples/s (default "
                      f"{DEFAULT_GPU_EXAMPLES_PER_S:g}: mt5-large 1024/256 on one H200)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", help="write the results here as JSON")
  p.add_argument("--_child", type=int, help=argparse.SUPPRESS)
  p.add_argument("--_packed_examples", type=int, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  quiet_tf()
  try:
    lengths = parse_lengths(args.lengths)
    if args._child:
      return _data_child(args._child, args.task, args.lengths, args.examples,
                         args._packed_examples or args.examples, args.batch, args.seed)
    cores = _parse_cores(args.cores)
  except BenchInputError as e:
    print(f"xmtf bench data: error: {e}", file=sys.stderr)
    return 2
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  # Examples per packed row at these lengths: the GPU's rows/s -> examples/s when packed, and
  # enough packed examples timed that the warm-up's prefetched batches do not count (>= 20 batches).
  try:
    examples, vocabulary, _ = task_examples(args.task, max(2_000, args.examples), seed=args.seed)
  except BenchInputError as e:
    print(f"xmtf bench data: error: {e}", file=sys.stderr)
    return 2
  epr = packing_report(examples, lengths, vocabulary.eos_id)["packed"]["examples_per_row"]
  packed_examples = max(args.examples, math.ceil(20 * args.batch * epr))
  print(f"data pipeline of {args.task} at {fmt_lengths(lengths)}: read + tokenize + "
        f"EncDecFeatureConverter, {args.batch} rows per batch, {args.examples} examples timed "
        f"unpacked, {packed_examples} packed ({epr:.2f} examples per packed row); {usable} usable "
        f"cores (os.cpu_count() {os.cpu_count()}), load average {os.getloadavg()[0]:.2f}",
        flush=True)
  runs = _measure(cores, args, packed_examples)
  if runs is None:
    return 1
  gpu_rows = args.gpu_examples_per_s
  need = {"unpacked": gpu_rows, "packed": gpu_rows * epr}
  one = next((r for r in runs if r["cores"] == 1), min(runs, key=lambda r: r["cores"]))
  result = {"task": args.task, "lengths": lengths, "batch": args.batch, "usable_cores": usable,
            "gpu_rows_per_s": gpu_rows, "packed_examples_per_row": epr, "runs": runs,
            "pipelines": {}}
  print(f"GPU step consumption: {gpu_rows:g} rows/s -> unpacked {need['unpacked']:,.0f} ex/s; "
        f"packed {gpu_rows:g} rows/s x {epr:.2f} examples/row = {need['packed']:,.0f} ex/s")
  print(f"  {'pipeline':<10}{'cores':>6}{'ex/s':>10}{'ex/s/core':>11}{'GPU needs ex/s':>16}"
        f"{'cores needed':>14}")
  for key in ("unpacked", "packed"):
    per_core = one[key]["examples_per_s"] / one["cores"]
    cores_needed = math.ceil(need[key] / per_core) if per_core > 0 else None
    result["pipelines"][key] = {"gpu_examples_per_s": need[key],
                                "examples_per_s_per_core": per_core,
                                "cores_needed": cores_needed,
                                "keeps_up_on_2_cores": 2 * per_core >= need[key]}
    for r in runs:
      rate = r[key]["examples_per_s"]
      lines = (f"  {key:<10}{r['cores']:>6}{rate:>10,.0f}{rate / r['cores']:>11,.0f}"
               f"{need[key]:>16,.0f}")
      print(lines + (f"{cores_needed:>14}" if r is one else ""))
  print("cores needed = ceil(GPU examples/s / one core's examples/s), assuming linear scaling; "
        "the all-core rows show the scaling measured on this machine.")
  print("JSON:" + json.dumps(result))
  write_json(args.json, result)
  return 0


if __name__ == "__main__":
  sys.exit(main_data(sys.argv[1:]))
