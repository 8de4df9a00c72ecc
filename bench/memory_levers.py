"""The compiled memory of the one-GPU recipes after each memory lever, one at a time.

  .venv/bin/python bench/memory_levers.py [--recipe xl|xxl|both]

Runs ``xmtf plan --compile on`` (XLA:CPU; about 30 s a compile) on the recipe with the levers
turned off, then on one by one in the order below, and prints the formula's and the compiled
total for each: the table in bench/NOTES.md "Memory levers". Each row keeps the levers above it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

A = "--gin.adafactor.Adafactor."
LEVERS = (  # (row name, bindings that turn the lever on)
    ("float32 parameters and accumulator", ()),
    ("+ bfloat16 parameters, stochastic rounding",
     (f"{A}param_dtype='bfloat16'", f"{A}stochastic_rounding=True")),
    ("+ bfloat16 accumulator", (f"{A}accumulator_dtype='bfloat16'",)),
    ("+ fused accumulation", (f"{A}fused_accumulation=True",)),
    ("+ sliced update", (f"{A}sliced_update=True",)),
)
OFF = (f"{A}param_dtype='float32'", f"{A}accumulator_dtype='float32'",
       f"{A}stochastic_rounding=False", f"{A}fused_accumulation=False",
       f"{A}sliced_update=False")
RECIPES = {"xl": ("mt0/mt0_xl_xp3_1gpu.gin", "a100-40g"),
           "xxl": ("mt0/mt0_xxl_xp3_1gpu.gin", "h100")}
TOTAL = re.compile(r"total per device\s+([\d.]+) GiB\s+([\d.]+) GiB")


def plan(gin_file: str, chip: str, bindings: list[str]) -> tuple[str, str]:
  xmtf = Path(sys.executable).with_name("xmtf")
  out = subprocess.run([str(xmtf), "plan", f"--gin_file={gin_file}", f"--chip={chip}",
                        "--devices=1", "--compile=on", *bindings],
                       capture_output=True, text=True, check=True).stdout
  match = TOTAL.search(out)
  if match is None:
    raise RuntimeError(f"no 'total per device' line in xmtf plan's output:\n{out}")
  return match.group(1), match.group(2)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--recipe", choices=("xl", "xxl", "both"), default="both")
  names = ("xl", "xxl") if parser.parse_args().recipe == "both" else (parser.parse_args().recipe,)
  for name in names:
    gin_file, chip = RECIPES[name]
    print(f"\n{gin_file} on {chip} (capacity x 0.9 is the planner's limit)")
    print(f"  {'lever':<46} {'formula GiB':>12} {'compiled GiB':>13}")
    on: list[str] = []
    for row, bindings in LEVERS:
      on += bindings
      # later bindings win: each row is OFF with the levers so far turned on
      formula, compiled = plan(gin_file, chip, [*OFF, *on])
      print(f"  {row:<46} {formula:>12} {compiled:>13}", flush=True)


if __name__ == "__main__":
  main()
