"""Aggregation, the model card's model-index block, the markdown table and the charts."""

import json

import pytest
import yaml

from tasks import heldout
from xmtf_pipeline import eval_report

# Excerpt of the model-index block of bigscience/mt0-large's model card (README.md, Apache-2.0):
# one entry per task type and per dataset family, verbatim.
CARD_EXCERPT = """
- task:
    type: Coreference resolution
  dataset:
    name: Winogrande XL (xl)
    type: winogrande
    config: xl
    split: validation
    revision: a80f460359d1e9a67c006011c94de42a8759430c
  metrics:
  - type: Accuracy
    value: 51.78
- task:
    type: Coreference resolution
  dataset:
    name: XWinograd (jp)
    type: Muennighoff/xwinograd
    config: jp
    split: test
    revision: 9dd5ea5505fad86b7bedad667955577815300cee
  metrics:
  - type: Accuracy
    value: 53.08
- task:
    type: Natural language inference
  dataset:
    name: ANLI (r1)
    type: anli
    config: r1
    split: validation
    revision: 9dbd830a06fea8b1c49d6e5ef2004a08d9f45094
  metrics:
  - type: Accuracy
    value: 33.3
- task:
    type: Natural language inference
  dataset:
    name: SuperGLUE (rte)
    type: super_glue
    config: rte
    split: validation
    revision: 9e12063561e7e6c79099feb6d5a493142584e9e2
  metrics:
  - type: Accuracy
    value: 64.26
- task:
    type: Natural language inference
  dataset:
    name: XNLI (ar)
    type: xnli
    config: ar
    split: validation
    revision: a5a45e4ff92d5d3f34de70aaf4b72c3bdf9f7f16
  metrics:
  - type: Accuracy
    value: 42.61
- task:
    type: Sentence completion
  dataset:
    name: StoryCloze (2016)
    type: story_cloze
    config: '2016'
    split: validation
    revision: e724c6f8cdf7c7a2fb229d862226e15b023ee4db
  metrics:
  - type: Accuracy
    value: 59.49
- task:
    type: Sentence completion
  dataset:
    name: SuperGLUE (copa)
    type: super_glue
    config: copa
    split: validation
    revision: 9e12063561e7e6c79099feb6d5a493142584e9e2
  metrics:
  - type: Accuracy
    value: 65
- task:
    type: Sentence completion
  dataset:
    name: XCOPA (et)
    type: xcopa
    config: et
    split: validation
    revision: 37f73c60fb123111fa5af5f9b705d0b3747fd187
  metrics:
  - type: Accuracy
    value: 56
- task:
    type: Sentence completion
  dataset:
    name: XStoryCloze (ar)
    type: Muennighoff/xstory_cloze
    config: ar
    split: validation
    revision: 8bb76e594b68147f1a430e86829d07189622b90d
  metrics:
  - type: Accuracy
    value: 56.59
"""


def _published_results():
  """Per (dataset, config, prompt) results whose max over prompts is the card's value."""
  out = []
  for (dataset, config), value in heldout.PUBLISHED_MT0_LARGE.items():
    for k, prompt in enumerate(heldout.DATASETS[dataset].prompts):
      out.append({"dataset": dataset, "config": config, "prompt": prompt,
                  "accuracy": (value - 2.0 * k) / 100, "num_examples": 100})
  return out


def test_model_index_reproduces_the_mt0_large_card():
  summary = eval_report.aggregate(_published_results())
  text = eval_report.model_index_yaml(summary, "mt0-large")
  parsed = yaml.safe_load(text)["model-index"]
  assert len(parsed) == 1 and parsed[0]["name"] == "mt0-large"
  results = parsed[0]["results"]
  configs = [(d, c) for d, spec in heldout.DATASETS.items() for c in spec.configs]
  assert len(results) == len(configs) == 50  # one entry per (dataset, config), as the card
  card = yaml.safe_load(CARD_EXCERPT)
  for entry in card:
    assert entry in results  # identical keys, names, splits, revisions, values
  for entry in results:  # the card's exact shape, key order included
    assert list(entry) == ["task", "dataset", "metrics"]
    assert list(entry["dataset"]) == ["name", "type", "config", "split", "revision"]
    assert entry["metrics"] == [{"type": "Accuracy", "value": entry["metrics"][0]["value"]}]
  # Grouped by task type, in the card's order.
  types = [e["task"]["type"] for e in results]
  assert types == sorted(types)
  assert [e["dataset"]["name"] for e in results[:2]] == ["Winogrande XL (xl)", "XWinograd (en)"]
  assert "config: '2016'" in text  # a string, as on the card


def test_aggregation_median_max_and_means():
  results = []
  for config, accs in (("ar", [0.2, 0.5, 0.4, 0.3, 0.1]), ("bg", [0.6, 0.6, 0.7, 0.9, 0.8])):
    for prompt, acc in zip(heldout.NLI_PROMPTS, accs):
      results.append({"dataset": "xnli", "config": config, "prompt": prompt, "accuracy": acc,
                      "num_examples": 10})
  summary = eval_report.aggregate(results)
  by = {c["config"]: c for c in summary["configs"]}
  assert by["ar"]["median"] == pytest.approx(30.0) and by["ar"]["max"] == pytest.approx(50.0)
  assert by["bg"]["median"] == pytest.approx(70.0) and by["bg"]["l2"]
  assert by["ar"]["published"] == 42.61
  (d,) = summary["datasets"]
  assert d["mean_median"] == pytest.approx(50.0) and d["mean_max"] == pytest.approx(70.0)
  assert d["l1_mean_median"] == pytest.approx(30.0)  # bg is L2
  assert d["published_mean_max"] == pytest.approx((42.61 + 43.94) / 2)
  table = eval_report.markdown_table(summary)
  assert "| xnli | ar | 30.00 | 50.00 | 42.61 | 5 | 10 |" in table
  assert "| xnli | bg (L2) | 70.00 | 90.00 | 43.94 | 5 | 10 |" in table


def test_write_reports_files_and_charts(tmp_path):
  summary = eval_report.aggregate(_published_results())
  written = eval_report.write_reports(summary, str(tmp_path), "ours")
  names = sorted(p.replace(str(tmp_path) + "/", "") for p in written)
  assert names == ["charts/coreference.png", "charts/nli.png", "charts/sentence_completion.png",
                   "model_index.yaml", "results.json", "results.md"]
  assert json.loads((tmp_path / "results.json").read_text())["configs"][0]["dataset"] == "winogrande"
  from PIL import Image
  with Image.open(tmp_path / "charts" / "nli.png") as img:
    assert img.format == "PNG" and img.width > 800  # 20 (dataset, config) groups
  # xmtf export-hf picks these files up for the exported model card.
  from xmtf_pipeline.interop import hf_export
  table, index = hf_export.find_eval_results(str(tmp_path), str(tmp_path))
  assert table.startswith("| dataset |") and index[0]["name"] == "ours"


def test_results_md_counts_truncated_examples_per_prompt(tmp_path):
  """Every prompt's row says how many of its prompts and choices were cut (0 normally), so a
  reader sees when the eval's limits changed a score."""
  results = [{"dataset": "copa", "config": "copa", "prompt": p, "accuracy": 0.5,
              "num_examples": 10, "truncated_inputs": n, "truncated_targets": 0}
             for p, n in zip(heldout.COPA_PROMPTS, (0, 3))]
  summary = eval_report.aggregate(results)
  eval_report.write_reports(summary, str(tmp_path), "ours", charts=False)
  text = (tmp_path / "results.md").read_text()
  assert ("| dataset | config | prompt | accuracy | examples | prompts truncated | "
          "choices truncated |") in text
  first, second = (r["prompt"] for r in results)
  assert f"| copa | copa | {first} | 50.00 | 10 | 0 | 0 |" in text
  assert f"| copa | copa | {second} | 50.00 | 10 | 3 | 0 |" in text
  assert "Per prompt" not in eval_report.markdown_table(summary)  # the console keeps it short
