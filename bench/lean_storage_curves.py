"""Issue 28's numerics check: the same run in the default mode (float32 parameters), with
bfloat16 storage and stochastic rounding (the lean mode), and with plain bfloat16 storage
(round-to-nearest), on the bundled xP3 sample with mT0's objective. Prints the final
validation (train_eval) loss of each against the default and writes both curves as a PNG.

  .venv/bin/python bench/lean_storage_curves.py --steps 300 --out /tmp/lean_curves

Each run is a real ``xmtf train`` (the same entry point and gin files); only the bindings in
MODES differ, including the one-GPU recipes' mode (every memory lever) and its baselines with
scanned layers. ``--modes`` runs some of them (all seven: about 17 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys

MODES = {
    "float32 (default)": {},
    "bf16 + stochastic rounding (lean)": {"adafactor.Adafactor.param_dtype": "'bfloat16'",
                                          "adafactor.Adafactor.stochastic_rounding": "True"},
    "bf16, round-to-nearest": {"adafactor.Adafactor.param_dtype": "'bfloat16'"},
    "lean + bf16 accumulator": {"adafactor.Adafactor.param_dtype": "'bfloat16'",
                                "adafactor.Adafactor.stochastic_rounding": "True",
                                "adafactor.Adafactor.accumulator_dtype": "'bfloat16'"},
    # The one-GPU recipes' mode: also scanned layers, fused accumulation and the sliced update.
    # Its baselines with the same layer stacking: scanning (nn.scan) and the fused stack each
    # draw dropout keys their own way, which moves a 300-step run by about 1%.
    "float32, scanned": {"network.T5Config.scan_layers": "True",
                         "network.T5Config.remat_policy": "'full'"},
    "float32, scanned, fused accumulation": {
        "network.T5Config.scan_layers": "True", "network.T5Config.remat_policy": "'full'",
        "adafactor.Adafactor.fused_accumulation": "True"},
    "every lever (the one-GPU recipes)": {
        "adafactor.Adafactor.param_dtype": "'bfloat16'",
        "adafactor.Adafactor.stochastic_rounding": "True",
        "adafactor.Adafactor.accumulator_dtype": "'bfloat16'",
        "adafactor.Adafactor.fused_accumulation": "True",
        "adafactor.Adafactor.sliced_update": "True",
        "network.T5Config.scan_layers": "True", "network.T5Config.remat_policy": "'full'"},
}


def flags(model_dir: str, steps: int, model: str, extra: dict[str, str]) -> list[str]:
  from xmtf_pipeline import gin_config
  macros = {
      "MODEL_DIR": f'"{model_dir}"', "MIXTURE_OR_TASK_NAME": '"xp3_sample"',
      "MIXTURE_OR_TASK_MODULE": '"tasks.xp3"',
      "TASK_FEATURE_LENGTHS": "{'inputs': 160, 'targets': 40}", "TRAIN_STEPS": str(steps),
      "INITIAL_CHECKPOINT_PATH": "None", "BATCH_SIZE": "16", "NUM_MICROBATCHES": "2",
      "DROPOUT_RATE": "0.1", "LOSS_NORMALIZING_FACTOR": '"AVERAGE_PER_SEQUENCE"',
      "RANDOM_SEED": "0", "LOG_PERIOD": "25", "SAVE_PERIOD": str(steps),
      "EVAL_PERIOD": "25", "EVAL_STEPS": "8",
      # mT0's constant learning rate: Adafactor's relative updates (~1e-3) are below half a
      # bfloat16 spacing (2^-9), which is where round-to-nearest storage loses them.
      "schedules.create_learning_rate_scheduler.base_learning_rate": "0.001",
      **extra}
  return ([f"--gin_file={gin_config.model_gin_file(model)}", "--gin_file=runs/finetune.gin"]
          + [f"--gin.{k}={v}" for k, v in macros.items()])


def run(model_dir: str, steps: int, model: str, extra: dict[str, str]) -> dict[str, list]:
  from xmtf_pipeline import train as train_lib
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    rc = train_lib.main(flags(model_dir, steps, model, extra))
  text = out.getvalue()
  if rc != 0:
    sys.exit(f"run {model_dir} failed ({rc}):\n{text[-3000:]}")
  curve = {"train": [(int(s), float(v)) for s, v in re.findall(r"step (\d+): loss ([\d.]+)", text)],
           "validation": [(int(s), float(v))
                          for s, v in re.findall(r"step (\d+): train_eval loss ([\d.]+)", text)]}
  return curve


COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14),
           (140, 86, 75), (23, 190, 207)]


def draw_png(curves: dict, path: str, model: str) -> None:
  """Train and validation loss against step, one line per mode (PIL: no plotting library)."""
  from PIL import Image, ImageDraw
  w, h, pad = 560, 380, 55
  img = Image.new("RGB", (2 * w, h + 40 + 14 * len(curves)), "white")
  d = ImageDraw.Draw(img)
  for panel, key in enumerate(("train", "validation")):
    x0 = panel * w
    points = [pt for c in curves.values() for pt in c[key]]
    smax = max(s for s, _ in points)
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    lo, hi = lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo)

    def xy(step, value, x0=x0, smax=smax, lo=lo, hi=hi):
      return (x0 + pad + (w - 2 * pad) * step / smax,
              h - pad + 20 - (h - 2 * pad) * (value - lo) / (hi - lo))

    d.rectangle([x0 + pad, pad - 20 + 20, x0 + w - pad, h - pad + 20], outline="black")
    title = f"{model}: {key} loss" + (" (train_eval)" if key == "validation" else "")
    d.text((x0 + pad, 10), title, fill="black")
    for frac in (0.0, 0.5, 1.0):
      v = lo + frac * (hi - lo)
      d.text((x0 + 5, xy(0, v)[1] - 6), f"{v:.3f}", fill="black")
      d.text((xy(frac * smax, lo)[0] - 10, h - pad + 25), f"{int(frac * smax)}", fill="black")
    for colour, c in zip(COLOURS, curves.values()):
      line = [xy(s, v) for s, v in c[key]]
      if len(line) > 1:
        d.line(line, fill=colour, width=2)
      for px, py in line if key == "validation" else ():
        d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
  for i, (colour, name) in enumerate(zip(COLOURS, curves)):
    d.line([(pad, h + 30 + 14 * i), (pad + 30, h + 30 + 14 * i)], fill=colour, width=3)
    d.text((pad + 40, h + 24 + 14 * i), name, fill="black")
  img.save(path)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--model", default="mt5_tiny")
  p.add_argument("--out", default="/tmp/lean_curves")
  p.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES),
                 help="the modes to run (default: all; the first is the table's baseline)")
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  curves = {}
  for name in args.modes:
    extra = MODES[name]
    folder = os.path.join(args.out, re.sub(r"\W+", "_", name).strip("_"))
    if os.path.exists(folder):
      sys.exit(f"{folder} exists: pass a new --out")
    curves[name] = run(folder, args.steps, args.model, extra)
    print(f"{name}: final validation loss {curves[name]['validation'][-1][1]:.4f}", flush=True)
  base = curves[args.modes[0]]["validation"][-1][1]
  print(f"\n{args.model}, {args.steps} steps, xp3_sample, batch 16 in 2 microbatches, LR 1e-3")
  print(f"| storage | final validation loss | vs {args.modes[0]} |\n|---|---:|---:|")
  for name, c in curves.items():
    v = c["validation"][-1][1]
    print(f"| {name} | {v:.4f} | {100 * (v - base) / base:+.2f}% |")
  with open(os.path.join(args.out, "curves.json"), "w") as f:
    json.dump(curves, f, indent=1)
  draw_png(curves, os.path.join(args.out, "curves.png"), args.model)
  print(f"curves: {os.path.join(args.out, 'curves.png')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
