"""Aggregates rank-classification results into the model card's numbers, tables and charts.

Aggregation (reference doc §8.3): per (dataset, config, prompt) accuracy; per config the
median and the max over prompts (the paper's figures use the median, the model card the
max); per dataset the mean over configs (languages), also over L1 configs only. Outputs:
``results.json`` (everything), ``results.md`` (markdown), ``model_index.yaml`` (the
``model-index`` block in the exact form of the mT0 model cards; ``xmtf export-hf
--eval_results`` copies it into the exported card) and ``charts/<cluster>.png``, ours
beside the published mt0-large numbers (drawn with Pillow; matplotlib is not installed).
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# The card lists results grouped by task type, datasets in this order (as tasks.heldout.DATASETS).
CLUSTER_FILES = {"Natural language inference": "nli", "Coreference resolution": "coreference",
                 "Sentence completion": "sentence_completion"}


def _pct(x: float | None) -> float | None:
  return None if x is None else 100.0 * float(x)


def aggregate(results: Iterable[Any]) -> dict[str, Any]:
  """``results`` (evaluation.PromptResult or dicts alike) -> the summary written as JSON.

  Accuracies are percentages. A config's ``published`` is mt0-large's card value.
  """
  from tasks import heldout

  rows = [{k: v for k, v in (r if isinstance(r, Mapping) else r.__dict__).items() if k != "rows"}
          for r in results]
  prompts = [{**dict(r), "accuracy": _pct(r["accuracy"])} for r in rows]
  configs: list[dict[str, Any]] = []
  order = {(d, c): i for i, (d, c, _) in enumerate(heldout.all_entries())}
  keys = sorted({(r["dataset"], r["config"]) for r in prompts}, key=lambda k: order.get(k, 1e9))
  for dataset, config in keys:
    accs = [r["accuracy"] for r in prompts
            if (r["dataset"], r["config"]) == (dataset, config) and r["accuracy"] is not None]
    spec = heldout.DATASETS.get(dataset)
    configs.append({
        "dataset": dataset, "config": config,
        "median": statistics.median(accs) if accs else None,
        "max": max(accs) if accs else None,
        "num_prompts": len(accs),
        "num_examples": max((r["num_examples"] for r in prompts
                             if (r["dataset"], r["config"]) == (dataset, config)), default=0),
        "l2": bool(spec and config in spec.l2_configs),
        "published": heldout.PUBLISHED_MT0_LARGE.get((dataset, config)),
    })
  datasets = []
  for dataset in dict.fromkeys(c["dataset"] for c in configs):
    mine = [c for c in configs if c["dataset"] == dataset and c["median"] is not None]
    l1 = [c for c in mine if not c["l2"]]
    pub = [c["published"] for c in mine if c["published"] is not None]
    datasets.append({
        "dataset": dataset, "num_configs": len(mine),
        "mean_median": _mean(c["median"] for c in mine),
        "mean_max": _mean(c["max"] for c in mine),
        "l1_mean_median": _mean(c["median"] for c in l1),
        "published_mean_max": _mean(pub) if len(pub) == len(mine) else None,
    })
  return {"prompts": prompts, "configs": configs, "datasets": datasets}


def _mean(values: Iterable[float]) -> float | None:
  values = list(values)
  return sum(values) / len(values) if values else None


def _fmt(x: float | None) -> str:
  return "–" if x is None else f"{x:.2f}"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
  """A markdown table; the first two columns are text, the rest right-aligned numbers."""
  align = ["---"] * 2 + ["---:"] * (len(header) - 2)
  return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|",
          *("| " + " | ".join(str(x) for x in row) + " |" for row in rows)]


def markdown_table(summary: Mapping[str, Any], per_prompt: bool = False) -> str:
  """Per (dataset, config) median/max over prompts beside mt0-large; then per-dataset means;
  with ``per_prompt`` (results.md), every prompt's accuracy and how many of its examples were
  truncated (prompts beyond the input limit, choices beyond the target limit; 0 normally)."""
  lines = _md_table(
      ["dataset", "config", "median over prompts", "max over prompts", "mt0-large (card)",
       "prompts", "examples"],
      ([c["dataset"], f"{c['config']}{' (L2)' if c['l2'] else ''}", _fmt(c["median"]),
        _fmt(c["max"]), _fmt(c["published"]), c["num_prompts"], c["num_examples"]]
       for c in summary["configs"]))
  lines += [""] + _md_table(
      ["dataset", "configs", "mean of medians", "mean of maxima", "L1 mean of medians",
       "mt0-large mean (card)"],
      ([d["dataset"], d["num_configs"], _fmt(d["mean_median"]), _fmt(d["mean_max"]),
        _fmt(d["l1_mean_median"]), _fmt(d["published_mean_max"])] for d in summary["datasets"]))
  lines += ["", "Accuracy in %, rank classification (sum of target log-probs incl. EOS). The card "
            "reports the max over prompts."]
  if per_prompt:
    lines += ["", "Per prompt:", ""] + _md_table(
        ["dataset", "config", "prompt", "accuracy", "examples", "prompts truncated",
         "choices truncated"],
        ([p["dataset"], p["config"], p["prompt"], _fmt(p["accuracy"]), p["num_examples"],
          p.get("truncated_inputs", 0), p.get("truncated_targets", 0)]
         for p in summary["prompts"]))
  return "\n".join(lines)


def _card_value(x: float) -> float | int:
  v = round(float(x), 2)
  return int(v) if v == int(v) else v


def model_index(summary: Mapping[str, Any], model_name: str) -> list[dict[str, Any]]:
  """The card's ``model-index``: one result per (dataset, config), max over prompts.

  Entries are grouped by task type (alphabetical) with datasets in the card's order;
  every entry is ``task.type``, ``dataset.{name,type,config,split,revision}`` and one
  ``Accuracy`` metric, as on bigscience/mt0-*.
  """
  from tasks import heldout

  entries = []
  configs = [c for c in summary["configs"] if c["max"] is not None]
  for task_type in sorted({heldout.DATASETS[c["dataset"]].task_type for c in configs}):
    for c in configs:
      spec = heldout.DATASETS[c["dataset"]]
      if spec.task_type != task_type:
        continue
      entries.append({
          "task": {"type": task_type},
          "dataset": {"name": spec.card_name(c["config"]), "type": spec.card_type,
                      "config": c["config"], "split": spec.split, "revision": spec.revision},
          "metrics": [{"type": "Accuracy", "value": _card_value(c["max"])}],
      })
  return [{"name": model_name, "results": entries}]


def model_index_yaml(summary: Mapping[str, Any], model_name: str) -> str:
  import yaml

  return yaml.safe_dump({"model-index": model_index(summary, model_name)}, sort_keys=False,
                        allow_unicode=True)


REPORT_FILES = ("results.json", "results.md", "model_index.yaml")


def report_paths(output_dir: str) -> list[str]:
  """Every file ``write_reports`` may write into ``output_dir`` (a chart per task cluster): what
  ``xmtf eval`` refuses to replace without --overwrite, and all it ever replaces."""
  return ([os.path.join(output_dir, name) for name in REPORT_FILES]
          + [os.path.join(output_dir, "charts", f"{stem}.png") for stem in CLUSTER_FILES.values()])


EXAMPLES_DIR = "examples"
EXAMPLE_KEYS = ("dataset", "config", "prompt", "index", "scores", "prediction", "label")


def example_paths(output_dir: str, entries: Sequence[tuple[str, str, str]]
                  ) -> dict[tuple[str, str, str], str]:
  """``EXAMPLES_DIR/<dataset>/<config>/<prompt>.jsonl`` per (dataset, config, prompt): the
  prompt's name with each run of characters other than letters, digits, ``-`` and ``_``
  as ``_`` (a number is added where two names of one config would meet)."""
  import re

  paths: dict[tuple[str, str, str], str] = {}
  for dataset, config, prompt in entries:
    folder = os.path.join(output_dir, EXAMPLES_DIR, dataset, config)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", prompt).strip("_") or "prompt"
    path, n = os.path.join(folder, f"{stem}.jsonl"), 1
    while path in paths.values():
      n += 1
      path = os.path.join(folder, f"{stem}_{n}.jsonl")
    paths[(dataset, config, prompt)] = path
  return paths


def write_examples(results: Iterable[Any], paths: Mapping[tuple[str, str, str], str]) -> list[str]:
  """One JSON line per scored example (``EXAMPLE_KEYS``) of each prompt into its path.

  The index is the row's position in its (dataset, config) rows as loaded (first
  ``max_examples`` rows), so results can be joined back to the data, and the scores are
  each choice's summed log-probability: what a user needs to see that a change of batch
  size or mesh does not move a prediction.
  """
  written = []
  for r in results:
    path = paths[(r.dataset, r.config, r.prompt)]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      for row in r.rows:
        f.write(json.dumps({"dataset": r.dataset, "config": r.config, "prompt": r.prompt, **row},
                           ensure_ascii=False) + "\n")
    written.append(path)
  return written


def earlier_example_files(output_dir: str) -> list[str]:
  """The per-example files under ``output_dir`` that an earlier ``xmtf eval`` wrote: jsonl
  files whose first line has exactly ``EXAMPLE_KEYS`` (anything else there, an empty file
  included, is kept)."""
  found = []
  for folder, _, files in os.walk(os.path.join(output_dir, EXAMPLES_DIR)):
    for name in files:
      path = os.path.join(folder, name)
      if not name.endswith(".jsonl"):
        continue
      try:
        with open(path, encoding="utf-8") as f:
          first = f.readline()
        ours = bool(first) and tuple(json.loads(first)) == EXAMPLE_KEYS
      except (OSError, ValueError):
        ours = False
      if ours:
        found.append(path)
  return sorted(found)


def write_reports(summary: Mapping[str, Any], output_dir: str, model_name: str,
                  charts: bool = True) -> list[str]:
  """Writes results.json, results.md, model_index.yaml and charts/*.png; returns the paths."""
  os.makedirs(output_dir, exist_ok=True)
  written = []

  def write(name: str, text: str) -> None:
    path = os.path.join(output_dir, name)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
    written.append(path)

  write("results.json", json.dumps(summary, indent=2, default=str) + "\n")
  write("results.md", markdown_table(summary, per_prompt=True) + "\n")
  write("model_index.yaml", model_index_yaml(summary, model_name))
  if charts:
    written += write_charts(summary, os.path.join(output_dir, "charts"))
  return written


# --------------------------------------------------------------------------- charts


def write_charts(summary: Mapping[str, Any], out_dir: str) -> list[str]:
  """One PNG per task cluster: per (dataset, config) our max-over-prompts accuracy beside
  mt0-large's card value (grey). Pillow only, so it works without matplotlib."""
  from tasks import heldout

  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for task_type, stem in CLUSTER_FILES.items():
    bars = [(f"{c['dataset']}/{c['config']}" if c["config"] != c["dataset"] else c["dataset"],
             c["max"], c["published"]) for c in summary["configs"]
            if heldout.DATASETS[c["dataset"]].task_type == task_type and c["max"] is not None]
    if bars:
      path = os.path.join(out_dir, f"{stem}.png")
      _bar_chart(bars, f"{task_type}: accuracy (max over prompts), ours vs mt0-large", path)
      paths.append(path)
  return paths


def _bar_chart(bars: list[tuple[str, float | None, float | None]], title: str, path: str) -> None:
  from PIL import Image, ImageDraw, ImageFont

  font = ImageFont.load_default()
  group, left, top, bottom, plot_h = 56, 44, 40, 70, 260
  width = max(left + group * len(bars) + 150, 8 * len(title) + 2 * left)
  height = top + plot_h + bottom
  img = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(img)
  draw.text((left, 10), title, fill="black", font=font)
  y0 = top + plot_h
  for tick in range(0, 101, 25):  # axis and gridlines
    y = y0 - plot_h * tick / 100
    draw.line([(left, y), (left + group * len(bars), y)], fill=(225, 225, 225))
    draw.text((6, y - 6), f"{tick:>3}", fill="black", font=font)
  draw.line([(left, top), (left, y0)], fill="black")
  draw.line([(left, y0), (left + group * len(bars), y0)], fill="black")
  colors = ((31, 119, 180), (150, 150, 150))
  for i, (label, ours, published) in enumerate(bars):
    x = left + group * i + 8
    for j, value in enumerate((ours, published)):
      if value is None:
        continue
      h = plot_h * max(0.0, min(100.0, value)) / 100
      draw.rectangle([x + j * 20, y0 - h, x + j * 20 + 17, y0], fill=colors[j])
      draw.text((x + j * 20, y0 - h - 12), f"{value:.0f}", fill="black", font=font)
    for k, part in enumerate(label.split("/")):
      draw.text((x, y0 + 6 + 12 * k), part, fill="black", font=font)
  lx = left + group * len(bars) + 16
  for j, name in enumerate(("ours", "mt0-large (card)")):
    draw.rectangle([lx, top + 20 * j, lx + 12, top + 20 * j + 12], fill=colors[j])
    draw.text((lx + 18, top + 20 * j), name, fill="black", font=font)
  img.save(path)
