"""``xmtf eval``: the held-out zero-shot suite by rank classification, on any checkpoint.

T5X's ``eval.py`` contract (``gin/runs/eval.gin``): ``CHECKPOINT_PATH`` (our
``MODEL_DIR[/checkpoint_N]``, a native T5X checkpoint, or a Hugging Face MT5 folder),
``EVAL_OUTPUT_DIR`` and ``MIXTURE_OR_TASK_NAME`` = a suite (``heldout``,
``heldout_l1``, ``heldout_bundled``), a dataset (``xnli``, ``xnli/fr``) or a held-out task
(``heldout_copa_best_option``); several may be comma-separated. Instead of seqio's
Evaluator, which scores every (prompt, choice) row separately, prompts are grouped so
the encoder runs once per prompt (rank_classification). The outputs are those of
eval_report: results.json, results.md, model_index.yaml and one chart per task cluster.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from xmtf_pipeline import eval_report, models
from xmtf_pipeline import params as params_lib
from xmtf_pipeline.network import T5Config
from xmtf_pipeline.rank_classification import (
  RankClassificationError,
  RankScorer,
  TruncationCounts,
  rank_classify,
  tokenize_example,
)

DEFAULT_LENGTHS = {"inputs": 2048, "targets": 256}  # the harness truncated prompts to 2048


class EvalError(ValueError):
  """An evaluation that cannot run; the message says why and what to change."""


@dataclasses.dataclass
class PromptResult:
  """Accuracy of one (dataset, config, prompt), with what was skipped or cut."""
  dataset: str
  config: str
  prompt: str
  accuracy: float | None  # fraction in [0, 1]
  num_examples: int
  unlabeled_skipped: int = 0
  truncated_inputs: int = 0
  truncated_targets: int = 0
  seconds: float = 0.0


def check_vocabulary(vocabulary: Any, config: T5Config) -> None:
  """The vocabulary's ids must all have an embedding row in the model."""
  size = int(vocabulary.vocab_size)
  if size > config.vocab_size:
    raise EvalError(
        f"The vocabulary has {size:,} ids but the model has only {config.vocab_size:,} embeddings: "
        "the checkpoint was trained with another vocabulary. Point tasks.vocab."
        "mt5_vocabulary_config.path (or MT5_SPM_PATH) at the model's SentencePiece file.")


def load_params(checkpoint_path: str, config: T5Config) -> Any:
  """Parameters of a checkpoint, checked against ``config`` before any data is read.

  Accepts an HF MT5 folder, our ``MODEL_DIR`` (newest) or ``MODEL_DIR/checkpoint_N``,
  and native T5X checkpoints (through checkpoint_formats.restore_initial). A checkpoint of
  another size or vocabulary fails naming the first mismatching parameter. Files hold
  per-layer parameters; a scanned ``config`` gets them stacked.
  """
  from xmtf_pipeline import layer_stacking

  disk = config.replace(scan_layers=False)
  params = _load_per_layer_params(checkpoint_path, disk)
  return layer_stacking.stack(params, disk) if config.scan_layers else params


def _load_per_layer_params(checkpoint_path: str, config: T5Config) -> Any:
  from xmtf_pipeline.adafactor import Adafactor
  from xmtf_pipeline.interop import checkpoint_formats, hf_import
  from xmtf_pipeline.trainer import TrainState

  if not checkpoint_path.startswith("gs://") and not os.path.exists(checkpoint_path):
    raise EvalError(f"CHECKPOINT_PATH {checkpoint_path} does not exist.")
  if hf_import.is_hf_dir(checkpoint_path):
    _, flat = hf_import.load(checkpoint_path, config)
    return params_lib.unflatten({k: jnp.asarray(v) for k, v in flat.items()})
  abstract = jax.eval_shape(lambda: TrainState.create(
      params_lib.init_params(config, jax.random.PRNGKey(0)), Adafactor()).state_dict())
  try:
    state = checkpoint_formats.restore_initial(checkpoint_path, config, abstract, params_only=True)
  except params_lib.ParamMismatchError as e:  # restore_initial names the training flag
    raise params_lib.ParamMismatchError(
        str(e).replace("INITIAL_CHECKPOINT_PATH", "CHECKPOINT_PATH")) from None
  step = int(jax.device_get(state["state"]["step"]))
  print(f"Loaded the parameters of {checkpoint_path} (train step {step}).", flush=True)
  return jax.tree_util.tree_map(jnp.asarray, state["target"])


def evaluate_suite(model: models.EncoderDecoderModel, params: Any, vocabulary: Any,
                   suite: str | Sequence[tuple[str, str, str]] = "heldout",
                   data_dir: str | None = None, max_examples: int | None = None,
                   batch_size: int = 32, feature_lengths: dict[str, int] | None = None,
                   truncate_side: str = "right",
                   log: Callable[[str], None] | None = print) -> list[PromptResult]:
  """Rank-classification accuracy of every (dataset, config, prompt) of ``suite``.

  Rows are loaded once per (dataset, config); unlabeled rows are skipped and counted;
  prompts or choices longer than ``feature_lengths`` are truncated and counted.
  """
  from tasks import heldout

  check_vocabulary(vocabulary, model.config)
  entries = heldout.resolve_suite(suite) if isinstance(suite, str) else list(suite)
  lengths = {**DEFAULT_LENGTHS, **(feature_lengths or {})}
  scorer = RankScorer(model.module, params, batch_size)
  results: list[PromptResult] = []
  rows_cache: dict[tuple[str, str], list[dict]] = {}
  for dataset, config, prompt in entries:
    t0 = time.time()
    if (dataset, config) not in rows_cache:
      rows_cache.clear()
      rows_cache[(dataset, config)] = heldout.load_rows(dataset, config, data_dir, max_examples)
    rows = rows_cache[(dataset, config)]
    template = heldout.get_prompt(dataset, prompt)
    counts = TruncationCounts()
    examples, unlabeled = [], 0
    for i, row in enumerate(rows):
      rendered = heldout.render(template, row, f" ({dataset}/{config} row {i})")
      if rendered is None:
        unlabeled += 1
        continue
      examples.append(tokenize_example(vocabulary, rendered.inputs, rendered.choices,
                                       rendered.label, lengths["inputs"], lengths["targets"],
                                       truncate_side, counts))
    result = rank_classify(scorer, examples)
    r = PromptResult(dataset, config, prompt, result.accuracy, result.num_examples, unlabeled,
                     counts.inputs, counts.targets, time.time() - t0)
    results.append(r)
    if log:
      acc = "n/a" if r.accuracy is None else f"{100 * r.accuracy:.2f}"
      notes = [f"{n} {what}" for n, what in ((unlabeled, "unlabeled skipped"),
                                             (counts.inputs, "prompts truncated"),
                                             (counts.targets, "choices truncated")) if n]
      log(f"  {dataset}/{config} [{prompt}]: accuracy {acc} on {r.num_examples} examples"
          f"{' (' + ', '.join(notes) + ')' if notes else ''} in {r.seconds:.1f}s")
  return results


def seqio_score_fn(model: models.EncoderDecoderModel, params: Any, batch_size: int = 32):
  """A ``score_fn`` for ``seqio.Evaluator`` (T5X's ``model.score_batch`` contract).

  It receives the evaluator's cached dataset of ``(index, features)`` pairs (features from
  ``EncDecFeatureConverter``) and returns ``[(index, sum log-prob of the targets)]``; with
  the held-out tasks' ``rank_accuracy`` metric this is rank classification row by row
  (one encoder pass per (prompt, choice) row, unlike ``evaluate_suite``).
  """
  import numpy as np

  fn = jax.jit(model.score_batch)
  keys = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
          "decoder_loss_weights")

  def score_fn(dataset) -> list[tuple[int, float]]:
    out = []
    for index, features in dataset.batch(batch_size).as_numpy_iterator():
      batch = {k: jnp.asarray(v) for k, v in features.items() if k in keys}
      out += list(zip(index.tolist(), np.asarray(fn(params, batch)).tolist()))
    return out

  return score_fn


def run_suite(model: models.EncoderDecoderModel, params: Any, vocabulary: Any,
              datasets: Sequence[str] = ("copa", "cb", "rte", "winogrande"),
              data_dir: str | None = None, max_examples: int | None = None,
              batch_size: int = 16, log: Callable[[str], None] | None = None) -> str:
  """The demo's hook: rank-classify ``datasets`` on the bundled real rows, return the table.

  ``data_dir`` defaults to the bundled rows (tasks/data/heldout); the markdown table has
  per (dataset, config) the median and max accuracy over prompts beside mt0-large's.
  """
  from tasks import heldout

  results = evaluate_suite(model, params, vocabulary, ",".join(datasets),
                           data_dir or str(heldout.BUNDLED_DIR), max_examples, batch_size,
                           log=log)
  return eval_report.markdown_table(eval_report.aggregate(results))


def evaluate(*, model: models.EncoderDecoderModel, checkpoint_path: str, output_dir: str,
             suite: str, vocabulary: Any, batch_size: int = 32,
             feature_lengths: dict[str, int] | None = None, data_dir: str | None = None,
             max_examples: int | None = None, truncate_side: str = "right",
             model_name: str | None = None, charts: bool = True) -> dict[str, Any]:
  """The gin-configured body of ``xmtf eval`` (gin/runs/eval.gin); returns the aggregate."""
  from tasks import heldout

  entries = heldout.resolve_suite(suite)  # an unknown name fails before the checkpoint loads
  if data_dir != heldout.suite_data_dir(suite, data_dir):
    data_dir = heldout.suite_data_dir(suite, data_dir)
    print(f"Rows: the bundled real rows in {data_dir}", flush=True)
  check_vocabulary(vocabulary, model.config)
  print(f"Evaluating {checkpoint_path} on {len(entries)} (dataset, config, prompt) entries "
        f"of {suite!r}; results in {output_dir}", flush=True)
  params = load_params(checkpoint_path, model.config)
  t0 = time.time()
  results = evaluate_suite(model, params, vocabulary, entries, data_dir, max_examples, batch_size,
                           feature_lengths, truncate_side)
  summary = eval_report.aggregate(results)
  summary["meta"] = {"checkpoint_path": checkpoint_path, "suite": suite,
                     "seconds": round(time.time() - t0, 2), "data_dir": data_dir,
                     "max_examples": max_examples, "truncate_side": truncate_side,
                     "feature_lengths": {**DEFAULT_LENGTHS, **(feature_lengths or {})}}
  name = model_name or os.path.basename(os.path.normpath(checkpoint_path))
  written = eval_report.write_reports(summary, output_dir, name, charts=charts)
  print(eval_report.markdown_table(summary))
  print("Wrote " + ", ".join(os.path.relpath(p, output_dir) for p in written) + f" in {output_dir}")
  return summary


def main(argv: list[str] | None = None, prog: str = "xmtf eval",
         entry: Callable | None = None, description: str = "") -> int:
  """T5X-style flags (as ``xmtf train``): --gin_file, --gin_bindings, --gin.NAME=VALUE."""
  from tasks.heldout import HeldOutError
  from xmtf_pipeline import checkpoints, flags, gin_config
  from xmtf_pipeline.interop import hf_import

  argv = list(sys.argv[1:] if argv is None else argv)
  errors = (gin_config.GinConfigError, EvalError, HeldOutError, RankClassificationError,
            checkpoints.CheckpointError, hf_import.HFImportError, params_lib.ParamMismatchError,
            FileNotFoundError, ValueError)
  try:
    args = flags.build_arg_parser(prog, description).parse_args(gin_config.rewrite_gin_args(argv))
    flags.configure_data(args)
    gin_config.parse(args.gin_file, args.gin_bindings, flags.search_paths(args), finalize=False)
    gin_config.check_macros()
    run = gin_config.get_configurable(entry or evaluate)
    run()
  except errors as e:
    # gin appends "In call to configurable ..." to errors raised inside a configurable.
    message = "\n".join(line for line in str(e).splitlines()
                        if not line.strip().startswith("In call to configurable"))
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
  return 0
