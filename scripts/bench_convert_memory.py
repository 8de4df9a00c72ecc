#!/usr/bin/env python
"""Peak host memory of checkpoint conversion on a real model shape with random weights.

Why: converting mt5-xxl (51.7 GB in float32) must not need the model twice in
host memory. This measures, each step in its own process (so peaks do not mix):

  1. write-hf   a random-weight HF directory (model.safetensors + config.json),
                streamed by safetensors_io (one tensor in memory at a time);
  2. stream     HF -> T5X-layout arrays, each dropped after conversion (what
                INITIAL_CHECKPOINT_PATH reads, minus keeping the result);
  3. import-hf  ``xmtf import-hf``: HF -> our orbax checkpoint (keeps the
                converted parameters once, then orbax writes them);
  4. export-hf  ``xmtf export-hf``: our checkpoint -> HF safetensors, streamed.

Peak = the process's maximum resident set (``ru_maxrss``); the baseline is the
resident set after imports, before any conversion. Files are read with
pread/readinto (no memory maps), so the resident set is the process's own memory.

  .venv/bin/python scripts/bench_convert_memory.py [--model mt5_base] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPM = os.path.join(ROOT, "tasks", "data", "spm", "xp3_sample.model")


def _rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _child(step: str, model: str, work: str) -> dict:
  import numpy as np

  from xmtf_pipeline import gin_config, params
  from xmtf_pipeline.interop import hf_export, hf_import, hf_mapping, safetensors_io

  config = gin_config.load_model_config(model, ["COMPUTE_DTYPE = 'float32'"])
  hf_dir, ckpt_dir, out_dir = (os.path.join(work, n) for n in ("hf", "ckpt", "hf_again"))
  base = _rss_mb()
  t0 = time.time()
  if step == "write-hf":
    os.makedirs(hf_dir)
    rng = np.random.default_rng(0)

    def random_rows(shape, rows_per_block=4096):
      for r0 in range(0, shape[0], rows_per_block):
        block = (min(rows_per_block, shape[0] - r0),) + tuple(shape[1:])
        yield rng.standard_normal(block, dtype=np.float32) * np.float32(0.05)

    plans = []
    for path, shape in params.param_shapes(config).items():
      key, transpose = hf_mapping.to_hf_name(path)
      hf_shape = shape[::-1] if transpose else shape
      plans.append(safetensors_io.TensorPlan(key, np.dtype(np.float32), hf_shape,
                                             lambda s=hf_shape: random_rows(s)))
    safetensors_io.write(os.path.join(hf_dir, "model.safetensors"), plans, {"format": "pt"})
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
      json.dump(hf_mapping.hf_config_dict(config), f)
  elif step == "stream":
    hf_config = hf_import.t5_config_from_hf(hf_import.read_config(hf_dir))
    n = sum(1 for _ in hf_import.iter_params(hf_dir, hf_config))
    assert n == len(params.param_shapes(config))
  elif step == "import-hf":
    hf_import.import_hf(hf_dir, ckpt_dir, overwrite=True, config=config)
  elif step == "export-hf":
    hf_export.export(ckpt_dir, out_dir, overwrite=True, spm_model=SPM,
                     max_shard_size="100GB")
  else:
    raise SystemExit(f"unknown step {step}")
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return {"step": step, "baseline_mb": round(base), "peak_mb": round(peak),
          "seconds": round(time.time() - t0, 1)}


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="mt5_base", help="model gin name (random weights)")
  p.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
  p.add_argument("--keep", action="store_true", help="keep the converted files")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    print(json.dumps(_child(args.child, args.model, args.workdir)))
    return 0

  from xmtf_pipeline import gin_config, params
  config = gin_config.load_model_config(args.model)
  n = params.count(config)
  model_mb = n * 4 / 2**20
  largest = max(int(__import__("numpy").prod(s)) for s in params.param_shapes(config).values())
  work = args.workdir or tempfile.mkdtemp(prefix="xmtf_bench_mem_")
  print(f"{args.model}: {n:,} parameters = {model_mb:,.0f} MiB in float32; largest array "
        f"{largest * 4 / 2**20:,.0f} MiB; scratch {work}")
  rows = []
  try:
    for step in ("write-hf", "stream", "import-hf", "export-hf"):
      proc = subprocess.run([sys.executable, __file__, "--child", step, "--model", args.model,
                             "--workdir", work], capture_output=True, text=True, cwd=ROOT)
      if proc.returncode:
        print(proc.stdout, proc.stderr[-4000:], file=sys.stderr)
        return 1
      row = json.loads(proc.stdout.strip().splitlines()[-1])
      rows.append(row)
      extra = row["peak_mb"] - row["baseline_mb"]
      print(f"  {step:<10} peak {row['peak_mb']:>7,} MiB  (baseline after imports "
            f"{row['baseline_mb']:>5,} MiB; +{extra:,} MiB = {extra / model_mb:.2f} x model)  "
            f"{row['seconds']:>6.1f} s", flush=True)
  finally:
    if not args.keep and not args.workdir:
      shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
