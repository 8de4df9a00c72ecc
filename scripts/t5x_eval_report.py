#!/usr/bin/env python3
"""The model card's numbers from an upstream T5X eval of the held-out suite (`python -m t5x.eval`
with gin/t5x/runs/eval_heldout.gin): per (dataset, config) the median and max over prompts.

    python scripts/t5x_eval_report.py EVAL_OUTPUT_DIR [--step N] [--model_name NAME] [--no_charts]

T5X (seqio's JSONLogger) writes one `inference_eval/<task>-metrics.jsonl` per task: a line
`{"step": N, "accuracy": A}` per evaluated checkpoint, A in % from tasks.heldout.rank_accuracy;
and `inference_eval/<task>-<step, 6 digits>.jsonl`, one line per (example, choice) row with its
`target` ([example, choice, is_correct]) and the model's `score`. Tasks named
`heldout_<dataset>[_<config>]_<prompt>` (tasks/heldout.py) are read; the accuracy is recomputed
from the scored rows, when they are there, with the same rule (the choice with the highest
summed log-likelihood; xmtf_pipeline/rank_classification.py) and must agree with T5X's metric.
The summary goes through our own report code (xmtf_pipeline/eval_report.py), so it is what
`xmtf eval` writes: EVAL_OUTPUT_DIR/results.json, results.md, model_index.yaml, charts/*.png.
Reads and writes local folders or any tf.io.gfile path (gs://...).
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METRICS_RE = re.compile(r"^(heldout_.+)-metrics\.jsonl$")


class ReportError(ValueError):
  """Nothing usable in the eval output folder; the message says what was looked for."""


def _gfile():
  import tensorflow as tf
  return tf.io.gfile


def _listdir(path: str) -> list[str]:
  if "://" in path:
    return [n.rstrip("/") for n in _gfile().listdir(path)]
  return os.listdir(path) if os.path.isdir(path) else []


def _read_lines(path: str) -> list[str] | None:
  if "://" in path:
    if not _gfile().exists(path):
      return None
    with _gfile().GFile(path) as f:
      return f.read().splitlines()
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return f.read().splitlines()


def _scored_rows(lines: list[str]) -> tuple[list[tuple[int, int, bool]], list[float]]:
  targets, scores = [], []
  for line in lines:
    if line.strip():
      row = json.loads(line)
      example, choice, correct = row["target"]
      targets.append((int(example), int(choice), bool(correct)))
      scores.append(float(row["score"]))
  return targets, scores


def collect(eval_dir: str, step: int | None = None) -> tuple[list[dict], int]:
  """(one row per task as eval_report.aggregate takes them, the step read)."""
  from tasks import heldout

  by_task = {heldout.task_name(*e): e for e in heldout.all_entries()}
  folder = posixpath.join(eval_dir, "inference_eval")
  names = sorted(n for n in _listdir(folder) if METRICS_RE.match(n))
  if not names:
    raise ReportError(f"No heldout_*-metrics.jsonl in {folder}: run `python -m t5x.eval` with "
                      "gin/t5x/runs/eval_heldout.gin and EVAL_OUTPUT_DIR pointing here.")
  metrics: dict[str, dict[int, float]] = {}
  for name in names:
    task = METRICS_RE.match(name).group(1)
    if task not in by_task:
      print(f"skipping {name}: {task} is not a task of tasks/heldout.py", file=sys.stderr)
      continue
    for line in _read_lines(posixpath.join(folder, name)) or []:
      if line.strip():
        record = json.loads(line)
        if "accuracy" in record:
          metrics.setdefault(task, {})[int(record["step"])] = float(record["accuracy"])
  if not metrics:
    raise ReportError(f"No accuracy in the held-out metric files of {folder}.")
  steps = sorted({s for by_step in metrics.values() for s in by_step})
  step = steps[-1] if step is None else step
  rows = []
  for task, by_step in metrics.items():
    if step not in by_step:
      print(f"skipping {task}: no metrics at step {step} (has {sorted(by_step)})", file=sys.stderr)
      continue
    dataset, config, prompt = by_task[task]
    accuracy = by_step[step]
    num_examples = 0
    lines = _read_lines(posixpath.join(folder, f"{task}-{step:06d}.jsonl"))
    if lines:
      targets, scores = _scored_rows(lines)
      again = heldout.rank_accuracy(targets, scores)["accuracy"]
      if abs(again - accuracy) > 1e-6:
        raise ReportError(f"{task} step {step}: T5X logged accuracy {accuracy}, its scored rows "
                          f"give {again}; the metric file and the inferences disagree.")
      num_examples = len({t[0] for t in targets})
    rows.append({"dataset": dataset, "config": config, "prompt": prompt,
                 "accuracy": accuracy / 100.0, "num_examples": num_examples, "task": task})
  if not rows:
    raise ReportError(f"No held-out task has metrics at step {step} in {folder}.")
  return rows, step


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("eval_dir", help="T5X's EVAL_OUTPUT_DIR")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--output_dir", default=None, help="where to write (default: eval_dir)")
  p.add_argument("--model_name", default=None, help="model-index name (default: folder name)")
  p.add_argument("--no_charts", action="store_true", help="skip charts/*.png")
  args = p.parse_args(argv)
  from xmtf_pipeline import eval_report

  try:
    rows, step = collect(args.eval_dir, args.step)
  except ReportError as e:
    print(f"t5x_eval_report: {e}", file=sys.stderr)
    return 1
  summary = eval_report.aggregate(rows)
  summary["source"] = {"engine": "t5x", "eval_dir": args.eval_dir, "step": step}
  out = args.output_dir or args.eval_dir
  name = args.model_name or posixpath.basename(args.eval_dir.rstrip("/")) or "model"
  if "://" in out:  # eval_report writes with open(): write locally, then copy
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
      for path in eval_report.write_reports(summary, tmp, name, charts=not args.no_charts):
        dest = posixpath.join(out, os.path.relpath(path, tmp))
        _gfile().makedirs(posixpath.dirname(dest))
        _gfile().copy(path, dest, overwrite=True)
  else:
    eval_report.write_reports(summary, out, name, charts=not args.no_charts)
  print(f"T5X eval of {args.eval_dir} at step {step}: {len(rows)} (dataset, config, prompt) "
        "entries")
  print(eval_report.markdown_table(summary))
  print(f"Wrote results.json, results.md, model_index.yaml in {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
