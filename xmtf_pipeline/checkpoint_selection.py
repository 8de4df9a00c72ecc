"""``xmtf select-checkpoint``: the best checkpoint of a run by a rank-classification score.

Every ``MODEL_DIR/checkpoint_<step>`` is evaluated on a small suite (rank classification,
evaluation.evaluate_suite) unless its score is already stored in
``MODEL_DIR/validation/<suite>/checkpoint_<step>.json`` (``validation_hook`` writes these
during training, at EVAL_PERIOD, if the trainer calls it); the score is the mean over
(dataset, config) of the median (or max) accuracy over prompts, the paper's aggregate.
The choice, every checkpoint's score and the reason go to stdout and to
``MODEL_DIR/validation/<suite>/selection.json``. Ties go to the earlier checkpoint.

mT0 selected checkpoints on validation datasets that are in neither xP3 nor the held-out
test suite (reference doc §8.5); selecting on held-out test datasets overstates their
scores, so that case is flagged in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

METRICS = ("median", "max")


class SelectionError(ValueError):
  """A run directory or setting that cannot be used to select; the message says why."""


def checkpoint_steps(model_dir: str) -> list[int]:
  if not os.path.isdir(model_dir):
    raise SelectionError(f"MODEL_DIR {model_dir} does not exist.")
  steps = sorted(int(m[1]) for name in os.listdir(model_dir)
                 if (m := re.fullmatch(r"checkpoint_(\d+)", name))
                 and os.path.isdir(os.path.join(model_dir, name)))
  if not steps:
    raise SelectionError(f"MODEL_DIR {model_dir} holds no checkpoint_<step> folders.")
  return steps


def _suite_key(suite: str, max_examples: int | None) -> str:
  key = re.sub(r"[^A-Za-z0-9_.-]+", "+", suite)
  return key + (f"@{max_examples}" if max_examples else "")


def score_of(summary: dict[str, Any], metric: str) -> float:
  values = [c[metric] for c in summary["configs"] if c[metric] is not None]
  if not values:
    raise SelectionError("The validation suite produced no accuracy (no labeled examples).")
  return sum(values) / len(values)


def validation_dir(model_dir: str, suite: str, max_examples: int | None) -> str:
  return os.path.join(model_dir, "validation", _suite_key(suite, max_examples))


def validation_hook(model_dir: str, suite: str, model: Any, vocabulary: Any,
                    metric: str = "median", data_dir: str | None = None,
                    max_examples: int | None = None, batch_size: int = 16,
                    partitioner: Any = None):
  """``fn(params, step) -> score`` for a trainer's EVAL_PERIOD: evaluates ``suite`` on the
  live parameters and stores the summary where ``select`` looks first, so choosing the best
  checkpoint afterwards costs nothing for steps validated during training. With a
  ``partitioner`` the parameters are sharded on its mesh and scored there."""
  from tasks import heldout
  from xmtf_pipeline import eval_report, evaluation, rank_classification

  entries = heldout.resolve_suite(suite)
  out_dir = validation_dir(model_dir, suite, max_examples)

  def hook(params: Any, step: int) -> float:
    scorer = (rank_classification.RankScorer(model.module, params, batch_size,
                                             partitioner=partitioner)
              if partitioner is not None else None)
    results = evaluation.evaluate_suite(model, params, vocabulary, entries, data_dir,
                                        max_examples, batch_size, log=None, scorer=scorer)
    summary = eval_report.aggregate(results)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"checkpoint_{step}.json"), "w") as f:
      json.dump(summary, f, indent=2)
    return score_of(summary, metric)

  return hook


def select(model_dir: str, suite: str, model: Any, vocabulary: Any, metric: str = "median",
           data_dir: str | None = None, max_examples: int | None = None, batch_size: int = 16,
           steps: list[int] | None = None, log=print,
           partitioner: Any = None) -> dict[str, Any]:
  """Scores every checkpoint (reusing stored scores) and returns the selection record;
  ``partitioner`` (default: data parallelism over every visible device) is the mesh the
  checkpoints are restored onto and scored on."""
  from tasks import heldout
  from xmtf_pipeline import evaluation
  from xmtf_pipeline.interop import restore
  from xmtf_pipeline.partitioning import Partitioner

  if metric not in METRICS:
    raise SelectionError(f"--metric must be one of {METRICS}, got {metric!r}.")
  evaluation.check_positive(batch_size, None, "--batch_size", error=SelectionError)
  evaluation.check_positive(max_examples, None, "--max_examples",
                            "; leave it unset for every row", error=SelectionError)
  entries = heldout.resolve_suite(suite)
  available = checkpoint_steps(model_dir)
  steps = steps or available
  missing = sorted(set(steps) - set(available))
  if missing:
    raise SelectionError(f"No checkpoint_{missing[0]} in {model_dir} (has: {available}).")
  out_dir = validation_dir(model_dir, suite, max_examples)
  # The stored scores are a cache that is reused, never replaced, and selection.json is
  # rewritten from them: nothing to refuse, but a folder that cannot take them must fail now,
  # not after the first checkpoint is scored.
  evaluation.check_output_dir(out_dir, [], True, "The validation folder", "--model_dir",
                              error=SelectionError)
  partitioner = partitioner or Partitioner()
  evaluation.check_model_parallel(partitioner, model.config)
  hook = validation_hook(model_dir, suite, model, vocabulary, metric, data_dir, max_examples,
                         batch_size, partitioner)
  scores: dict[int, float] = {}
  for step in steps:
    path = os.path.join(out_dir, f"checkpoint_{step}.json")
    if os.path.isfile(path):
      with open(path) as f:
        scores[step] = score_of(json.load(f), metric)
      log(f"checkpoint_{step}: stored validation results ({path})")
    else:
      log(f"checkpoint_{step}: evaluating {len(entries)} prompts of {suite!r} on "
          f"{partitioner.describe()}")
      params = restore.restore_params(os.path.join(model_dir, f"checkpoint_{step}"), model.config,
                                      partitioner)
      scores[step] = hook(params, step)
  best = max(scores, key=lambda s: (scores[s], -s))  # ties: the earlier checkpoint
  ranked = sorted(scores, key=lambda s: (-scores[s], s))
  runner_up = next((s for s in ranked if s != best), None)
  what = f"mean over (dataset, config) of the {metric} accuracy over prompts on {suite!r}"
  reason = f"checkpoint_{best} has the highest {what}: {scores[best]:.2f}"
  if runner_up is not None:
    gap = scores[best] - scores[runner_up]
    reason += (f" (next: checkpoint_{runner_up} at {scores[runner_up]:.2f}, "
               f"{'tied; the earlier wins' if gap == 0 else f'+{gap:.2f} points'})")
  if len(scores) == 1:
    reason += " (the only checkpoint)"
  test_sets = sorted({d for d, _, _ in entries})
  caution = (f"caution: {', '.join(test_sets)} are held-out TEST datasets; mT0 selected on "
             "separate validation datasets (reference doc §8.5), so scores of the chosen "
             "checkpoint on these sets are optimistic.")
  record = {"best_step": best, "best_checkpoint": os.path.join(model_dir, f"checkpoint_{best}"),
            "metric": metric, "suite": suite, "max_examples": max_examples,
            "scores": {str(s): scores[s] for s in steps}, "reason": reason, "caution": caution}
  with open(os.path.join(out_dir, "selection.json"), "w") as f:
    json.dump(record, f, indent=2)
  for s in steps:
    log(f"  checkpoint_{s}: {scores[s]:.2f}{'  <- best' if s == best else ''}")
  log(reason)
  log(caution)
  return record


def _model_and_vocab(args: argparse.Namespace):
  """The model config (--model, else MODEL_DIR/config.gin) and the run's vocabulary."""
  from xmtf_pipeline import gin_config, models
  from xmtf_pipeline.interop import run_config

  run = run_config.read_run_config(args.model_dir)
  if args.model:
    config = gin_config.load_model_config(args.model, args.gin_bindings)
  else:
    config = run_config.model_config_from_run(run)
    if config is None:
      raise SelectionError(f"{args.model_dir} has no config.gin naming the model; pass --model.")
    config = config.replace(dropout_rate=0.0)
  import seqio

  from tasks import vocab as vocab_lib
  try:
    path, extra, _ = run_config.resolve_spm(args.spm_model, run, args.model_dir)
  except run_config.RunConfigError as e:
    raise SelectionError(str(e)) from None
  if extra is None:
    extra = vocab_lib.mt5_vocabulary_config(path)[1]
  return models.EncoderDecoderModel(config), seqio.SentencePieceVocabulary(path, extra_ids=extra)


SELECT_DESCRIPTION = """Pick the best checkpoint of a training run's MODEL_DIR by a rank-classification
validation score: every MODEL_DIR/checkpoint_<step> is evaluated on the suite (as xmtf eval
does), scored by the mean over (dataset, config) of the median (or max) accuracy over prompts.

What to set:
  run           --model_dir DIR     the run's MODEL_DIR (holds checkpoint_<step>/, config.gin)
  suite / tasks --suite NAME        validation suite, dataset(s) or task(s), e.g. copa,cb
  data folder   --data_dir DIR      local rows (default: HF hub/cache; tasks/data/heldout = the
                                    bundled rows)
  vocabulary    --spm_model FILE    default: the run's (MODEL_DIR/config.gin)
  batch size    --batch_size N      (default 16)
  max examples  --max_examples N    rows per (dataset, config) (default: all)
  model         --model NAME        model gin (default: from MODEL_DIR/config.gin)
  mesh          --num_partitions N  model-parallel size over every visible device, as
                                    training's NUM_PARTITIONS (default 1: data parallelism)

Example, on the bundled rows:
  xmtf select-checkpoint --model_dir /runs/mt0 --suite copa,rte \\
    --data_dir tasks/data/heldout --max_examples 100

Written: the choice, every checkpoint's score and the reason on stdout and in
MODEL_DIR/validation/<suite>[@max_examples]/selection.json; each checkpoint's scores in
MODEL_DIR/validation/<suite>[@max_examples]/checkpoint_<step>.json (reused on the next call).
mT0 selected on validation datasets in neither xP3 nor the held-out suite; selecting on
held-out test datasets is flagged."""


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="xmtf select-checkpoint", description=SELECT_DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model_dir", required=True, help="the run's MODEL_DIR (checkpoint_<step>/)")
  p.add_argument("--suite", required=True,
                 help="held-out suite, dataset(s) or task(s), e.g. heldout_bundled or copa,cb")
  p.add_argument("--metric", choices=METRICS, default="median",
                 help="per config: median (paper) or max (model card) over prompts")
  p.add_argument("--data_dir", default=None,
                 help="local rows (default: HF hub/cache; tasks/data/heldout = bundled rows)")
  p.add_argument("--max_examples", type=int, default=None, help="rows per (dataset, config)")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--steps", default=None, help="comma-separated steps (default: all)")
  p.add_argument("--model", default=None, help="model gin (default: from MODEL_DIR/config.gin)")
  p.add_argument("--gin_bindings", action="append", default=[], help="bindings for --model")
  p.add_argument("--spm_model", default=None,
                 help="SentencePiece model (default: the run's, from MODEL_DIR/config.gin)")
  p.add_argument("--num_partitions", type=int, default=1,
                 help="model-parallel size of the mesh over every visible device (as training's "
                 "NUM_PARTITIONS); default 1")
  args = p.parse_args(argv)
  from tasks.heldout import HeldOutError
  from xmtf_pipeline import checkpoints, evaluation, gin_config
  from xmtf_pipeline.params import ParamMismatchError
  try:
    steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    model, vocabulary = _model_and_vocab(args)
    from xmtf_pipeline.partitioning import Partitioner
    select(args.model_dir, args.suite, model, vocabulary, args.metric, args.data_dir,
           args.max_examples, args.batch_size, steps,
           partitioner=Partitioner(num_partitions=args.num_partitions))
  except (SelectionError, HeldOutError, evaluation.EvalError, checkpoints.CheckpointError,
          ParamMismatchError, gin_config.GinConfigError, ValueError) as e:
    print(f"xmtf select-checkpoint: error: {e}", file=sys.stderr)
    return 2
  return 0
