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
import numpy as np

from xmtf_pipeline import eval_report, models
from xmtf_pipeline import params as params_lib
from xmtf_pipeline.interop import restore
from xmtf_pipeline.network import T5Config
from xmtf_pipeline.rank_classification import (
  RankClassificationError,
  RankExample,
  RankScorer,
  TruncationCounts,
  compile_threads,
  rank_classify_many,
  tokenize_example,
)

DEFAULT_LENGTHS = {"inputs": 2048, "targets": 256}  # the harness truncated prompts to 2048


class EvalError(ValueError):
  """An evaluation that cannot run; the message says why and what to change."""


def check_positive(value: int | None, name: str | None, flag: str, unset: str = "",
                   error: type[ValueError] = EvalError) -> None:
  """``value`` (None where allowed) must be >= 1; checked before anything loads, since 0 rows or
  a batch of 0 otherwise fails much later and blames something else (a data file, the scorer)."""
  if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
    what = f"{name} ({flag})" if name else flag
    raise error(f"{what} must be a whole number of at least 1, got {value!r}{unset}.")


def check_output_dir(output_dir: str, outputs: Sequence[str], overwrite: bool, name: str,
                     flag: str = "--output_dir", error: type[ValueError] = EvalError) -> None:
  """Before any work: ``output_dir`` exists (created if needed) and takes files, and none of
  ``outputs`` (paths the run will write) is there already unless ``overwrite``.

  Results are written at the end of a run: a folder found unwritable then, or results of an
  earlier run replaced without asking, would cost the whole run.
  """
  import tempfile

  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise error(f"{name} {output_dir} is a file, not a folder; choose another {flag}.")
  try:
    os.makedirs(output_dir, exist_ok=True)
    # Every folder that already exists and will receive files (e.g. charts/) is probed: the
    # permission that matters is on the folder itself, not on its parent.
    folders = dict.fromkeys([output_dir, *(os.path.dirname(p) for p in outputs)])
    for folder in folders:
      if os.path.isdir(folder):
        fd, probe = tempfile.mkstemp(prefix=".xmtf-write-probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
  except OSError as e:
    raise error(f"{name} {output_dir} cannot be written ({e.strerror or e}); choose a writable "
                f"{flag} or fix its permissions.") from None
  existing = [p for p in outputs if os.path.lexists(p)]
  if existing and not overwrite:
    listed = ", ".join(os.path.relpath(p, output_dir) for p in existing)
    raise error(f"{name} {output_dir} already holds {listed} from an earlier run; pass "
                f"--overwrite to replace them (other files there are kept), or choose another "
                f"{flag}.")
  locked = [p for p in existing if not os.access(p, os.W_OK)]
  if locked:
    raise error(f"{name} {output_dir}: {os.path.relpath(locked[0], output_dir)} cannot be "
                f"replaced (not writable); fix its permissions or choose another {flag}.")


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
  scoring_seconds: float = 0.0  # its share (by examples) of its dataset's scoring wall time
  # Per scored example: its row index in the (dataset, config) rows, its choices' scores, the
  # prediction and the label (eval_report.write_examples; not part of results.json).
  rows: list[dict[str, Any]] = dataclasses.field(default_factory=list, repr=False)


def check_vocabulary(vocabulary: Any, config: T5Config) -> None:
  """The vocabulary's ids must all have an embedding row in the model."""
  size = int(vocabulary.vocab_size)
  if size > config.vocab_size:
    extra = getattr(vocabulary, "extra_ids", None)
    parts = f" ({size - extra:,} pieces + {extra} extra ids)" if isinstance(extra, int) else ""
    raise EvalError(
        f"The vocabulary has {size:,} ids{parts} but the model has only {config.vocab_size:,} "
        "embeddings: not this checkpoint's vocabulary, or too many extra ids. Point --spm_model "
        "(tasks.vocab.mt5_vocabulary_config.path) at the model's SentencePiece file, or set "
        "tasks.vocab.mt5_vocabulary_config.extra_ids.")


def agreed(check: Callable[[], None]) -> None:
  """Runs ``check`` (process 0's refusal, e.g. of its output folder) and lets every process
  stop with it, instead of the others waiting in the first collective until a timeout."""
  from xmtf_pipeline import distributed
  error = None
  try:
    check()
  except ValueError as e:  # EvalError, InferError: a refusal in one line
    error = e
  ok = distributed.process_zero_agrees(error is None)
  if error is not None:
    raise error
  if not ok:
    raise EvalError("Process 0 refused to start (its log says why); nothing was done.")


def check_model_parallel(partitioner: Any, config: T5Config) -> None:
  """The mesh can be made here and its model axis splits the attention heads evenly."""
  from xmtf_pipeline.partitioning import PartitioningError

  try:
    mp = partitioner.mesh.shape["model"]
  except PartitioningError as e:
    raise EvalError(f"NUM_PARTITIONS: {e}") from None
  if config.num_heads % mp:
    raise EvalError(
        f"NUM_PARTITIONS={mp} does not divide the model's {config.num_heads} attention heads; "
        f"choose a model-parallel size that divides {config.num_heads} and the device count.")


def evaluate_suite(model: models.EncoderDecoderModel, params: Any, vocabulary: Any,
                   suite: str | Sequence[tuple[str, str, str]] = "heldout",
                   data_dir: str | None = None, max_examples: int | None = None,
                   batch_size: int = 32, feature_lengths: dict[str, int] | None = None,
                   truncate_side: str = "right",
                   log: Callable[[str], None] | None = print,
                   scorer: RankScorer | None = None) -> list[PromptResult]:
  """Rank-classification accuracy of every (dataset, config, prompt) of ``suite``.

  Rows are loaded once per (dataset, config); unlabeled rows are skipped and counted;
  prompts or choices longer than ``feature_lengths`` are truncated and counted. The prompts
  of one (dataset, config) are scored together (fuller batches), and one jitted function
  serves the whole suite, compiled once per shape bucket (rank_classification._SCORE_FN),
  all buckets ahead of scoring and in parallel. ``scorer`` (else a new one) keeps the
  compilation and scoring times.
  """
  from tasks import heldout

  check_vocabulary(vocabulary, model.config)
  entries = heldout.resolve_suite(suite) if isinstance(suite, str) else list(suite)
  lengths = {**DEFAULT_LENGTHS, **(feature_lengths or {})}
  scorer = scorer or RankScorer(model.module, params, batch_size)
  groups: list[list[tuple[str, str, str]]] = []  # consecutive entries of one (dataset, config)
  for entry in entries:
    if groups and groups[-1][0][:2] == entry[:2]:
      groups[-1].append(entry)
    else:
      groups.append([entry])
  # Every group is tokenized first, so that all shapes compile at once, in parallel, before
  # any scoring (RankScorer.compile): on small datasets compilation would dominate.
  prepared = [_prepare_group(group, vocabulary, data_dir, max_examples, lengths, truncate_side)
              for group in groups]
  before = scorer.compile_seconds
  shapes = scorer.compile([[ex for p in group for ex in p[1]] for group in prepared])
  if log:
    log(f"Compiled {shapes} new scoring shapes in {scorer.compile_seconds - before:.1f}s "
        f"({compile_threads()} threads)")
  results: list[PromptResult] = []
  for (dataset, config), group in zip((g[0][:2] for g in groups), prepared):
    t0 = time.time()
    ranked = rank_classify_many(scorer, [p[1] for p in group])
    scoring = time.time() - t0
    total = sum(len(p[1]) for p in group)
    for (prompt, examples, unlabeled, counts, seconds, indices), result in zip(group, ranked):
      share = scoring * len(examples) / total if total else 0.0
      r = PromptResult(dataset, config, prompt, result.accuracy, result.num_examples, unlabeled,
                       counts.inputs, counts.targets, seconds + share, share,
                       [{"index": i, "scores": [float(x) for x in s], "prediction": p, "label": y}
                        for i, s, p, y in zip(indices, result.scores, result.predictions,
                                              result.labels)])
      results.append(r)
      if log:
        acc = "n/a" if r.accuracy is None else f"{100 * r.accuracy:.2f}"
        skipped = f", {unlabeled} unlabeled skipped" if unlabeled else ""
        log(f"  {dataset}/{config} [{prompt}]: accuracy {acc} on {r.num_examples} examples "
            f"({counts.inputs} prompts truncated, {counts.targets} choices truncated{skipped}) "
            f"in {r.seconds:.1f}s")
  if log:
    log(throughput_line(results))
  return results


def _prepare_group(group: Sequence[tuple[str, str, str]], vocabulary: Any, data_dir: str | None,
                   max_examples: int | None, lengths: dict[str, int], truncate_side: str
                   ) -> list[tuple[str, list[RankExample], int, TruncationCounts, float, list[int]]]:
  """Per prompt of one (dataset, config): its tokenized examples, unlabeled rows skipped,
  truncations, the seconds it took (rows are loaded once for the group) and each example's
  row index."""
  from tasks import heldout

  dataset, config = group[0][:2]
  rows = heldout.load_rows(dataset, config, data_dir, max_examples)
  prepared = []
  for _, _, prompt in group:
    t0 = time.time()
    template = heldout.get_prompt(dataset, prompt)
    counts = TruncationCounts()
    examples, unlabeled, indices = [], 0, []
    for i, row in enumerate(rows):
      rendered = heldout.render(template, row, f" ({dataset}/{config} row {i})")
      if rendered is None:
        unlabeled += 1
        continue
      indices.append(i)
      examples.append(tokenize_example(vocabulary, rendered.inputs, rendered.choices,
                                       rendered.label, lengths["inputs"], lengths["targets"],
                                       truncate_side, counts))
    prepared.append((prompt, examples, unlabeled, counts, time.time() - t0, indices))
  return prepared


def throughput(results: Sequence[PromptResult]) -> dict[str, Any]:
  """Scored examples, scoring wall time and examples per second (compilation done ahead by
  ``RankScorer.compile`` not included; any shape it missed would be)."""
  examples = sum(r.num_examples for r in results)
  seconds = sum(r.scoring_seconds for r in results)
  return {"examples": examples, "scoring_seconds": round(seconds, 2),
          "examples_per_second": round(examples / seconds, 1) if seconds > 0 else None}


def throughput_line(results: Sequence[PromptResult]) -> str:
  t = throughput(results)
  return (f"Scored {t['examples']} examples in {t['scoring_seconds']:.1f}s "
          f"({t['examples_per_second'] or 0:.1f} examples/s)")


def seqio_score_fn(model: models.EncoderDecoderModel, params: Any, batch_size: int = 32):
  """A ``score_fn`` for ``seqio.Evaluator`` (T5X's ``model.score_batch`` contract).

  It receives the evaluator's cached dataset of ``(index, features)`` pairs (features from
  ``EncDecFeatureConverter``) and returns ``[(index, sum log-prob of the targets)]``; with
  the held-out tasks' ``rank_accuracy`` metric this is rank classification row by row
  (one encoder pass per (prompt, choice) row, unlike ``evaluate_suite``).
  """

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
             model_name: str | None = None, charts: bool = True,
             overwrite: bool = False, partitioner: Any = None) -> dict[str, Any]:
  """The gin-configured body of ``xmtf eval`` (gin/runs/eval.gin); returns the aggregate.

  ``overwrite`` (``--overwrite``) lets it replace the reports of an earlier run in
  ``output_dir``; only the files it writes are touched. ``partitioner`` (as training's,
  NUM_PARTITIONS): the mesh over every visible device that holds the parameters and
  scores the batches; default: data parallelism over all devices.
  """
  from tasks import heldout
  from xmtf_pipeline.partitioning import Partitioner

  check_positive(batch_size, "BATCH_SIZE", "--batch_size")
  check_positive(max_examples, "EVALUATOR_NUM_EXAMPLES", "--max_examples",
                 "; leave it unset for every row")
  entries = heldout.resolve_suite(suite)  # an unknown name fails before the checkpoint loads
  example_files = eval_report.example_paths(output_dir, entries)
  writer = jax.process_index() == 0  # process 0 writes; every process scores its share
  agreed(lambda: check_output_dir(
      output_dir, eval_report.report_paths(output_dir) + list(example_files.values()), overwrite,
      "EVAL_OUTPUT_DIR") if writer else None)
  if data_dir != heldout.suite_data_dir(suite, data_dir):
    data_dir = heldout.suite_data_dir(suite, data_dir)
    print(f"Rows: the bundled real rows in {data_dir}", flush=True)
  check_vocabulary(vocabulary, model.config)
  partitioner = partitioner or Partitioner()
  check_model_parallel(partitioner, model.config)
  print(f"Evaluating {checkpoint_path} on {len(entries)} (dataset, config, prompt) entries "
        f"of {suite!r} on {partitioner.describe()}; results in {output_dir}", flush=True)
  params = restore.restore_params(checkpoint_path, model.config, partitioner)
  t0 = time.time()
  scorer = RankScorer(model.module, params, batch_size, partitioner=partitioner)
  results = evaluate_suite(model, params, vocabulary, entries, data_dir, max_examples, batch_size,
                           feature_lengths, truncate_side, scorer=scorer)
  summary = eval_report.aggregate(results)
  summary["meta"] = {"checkpoint_path": checkpoint_path, "suite": suite,
                     "seconds": round(time.time() - t0, 2), **throughput(results),
                     "compile_seconds": round(scorer.compile_seconds, 2),
                     "shapes_compiled": scorer.shapes_compiled,
                     "data_dir": data_dir,
                     "max_examples": max_examples, "truncate_side": truncate_side,
                     "feature_lengths": {**DEFAULT_LENGTHS, **(feature_lengths or {})}}
  if not writer:
    return summary
  name = model_name or os.path.basename(os.path.normpath(checkpoint_path))
  written = eval_report.write_reports(summary, output_dir, name, charts=charts)
  examples = eval_report.write_examples(results, example_files)
  if overwrite:  # an earlier run's file for what was not scored now would pass for this one's
    for path in eval_report.report_paths(output_dir) + eval_report.earlier_example_files(
        output_dir):
      if path not in written and path not in examples and os.path.lexists(path):
        os.remove(path)
  print(eval_report.markdown_table(summary))
  print("Wrote " + ", ".join(os.path.relpath(p, output_dir) for p in written)
        + f" and {len(examples)} per-example files ({eval_report.EXAMPLES_DIR}/) in {output_dir}")
  return summary


EVAL_DESCRIPTION = """Evaluate a checkpoint on mT0's held-out zero-shot suite by rank classification
(the summed log-probability of each answer choice, EOS included; T5X's eval.py with
gin/runs/eval.gin).

What to set (plain flag = its T5X gin form; give one or the other):
  checkpoint    --checkpoint PATH     = --gin.CHECKPOINT_PATH   our MODEL_DIR[/checkpoint_N], a
                native T5X checkpoint, or a Hugging Face MT5 folder (config.json,
                model.safetensors, spiece.model: its model and tokenizer are used as they are)
  output folder --output_dir DIR      = --gin.EVAL_OUTPUT_DIR
  suite / tasks --suite NAME          = --gin.MIXTURE_OR_TASK_NAME   heldout, heldout_l1,
                heldout_bundled (bundled rows, offline), a dataset (xnli, xnli/fr, copa) or a
                task (heldout_copa_best_option); comma-separated
  data folder   --data_dir DIR        = --gin.DATA_DIR   local rows (DIR/<dataset>/<config>/
                <split>.jsonl or HF save_to_disk folders); default: the HF hub/cache
  vocabulary    --spm_model FILE      = --gin.tasks.vocab.mt5_vocabulary_config.path   default:
                the checkpoint's own (an HF folder's spiece.model, a run's config.gin), else
                $MT5_SPM_PATH, else mT5's on GCS; one line says which was used
  batch size    --batch_size N        = --gin.BATCH_SIZE   (default 32)
  max examples  --max_examples N      = --gin.EVALUATOR_NUM_EXAMPLES   rows per (dataset,
                config); default: all
  model         --model NAME          = --gin_file=models/NAME.gin   default: the HF folder's
                config.json or the run's MODEL_DIR/config.gin
  overwrite     --overwrite           = --gin.evaluation.evaluate.overwrite=True   replace the
                files below of an earlier run in the output folder (refused otherwise, before
                any work); other files there are kept
Without --gin_file (or with model gins only), gin/runs/eval.gin is used.

Example, the bundled suite (offline) on a Hugging Face folder:
  huggingface-cli download bigscience/mt0-small --local-dir mt0-small   # once, online
  xmtf eval --checkpoint mt0-small --suite heldout_bundled --output_dir eval-mt0-small
The same in T5X form, on a T5X checkpoint:
  xmtf eval --gin_file=models/mt5_small.gin --gin_file=runs/eval.gin \\
    --gin.CHECKPOINT_PATH=\\"/ckpts/mt0_small/checkpoint_1025000\\" \\
    --gin.EVAL_OUTPUT_DIR=\\"eval-mt0-small\\" --gin.MIXTURE_OR_TASK_NAME=\\"heldout_bundled\\"

Written into the output folder: results.json (every prompt's accuracy and the run's settings),
results.md (the markdown table: median and max over prompts per dataset and config),
model_index.yaml (the model-index YAML for a Hugging Face model card), charts/*.png (one
chart per task cluster) and examples/<dataset>/<config>/<prompt>.jsonl (per scored row: its
index, each choice's score, the prediction and the label); the table is printed too."""


def _eval_plain_flags():
  from xmtf_pipeline.flags import PlainFlag
  return (
      PlainFlag("--checkpoint", "CHECKPOINT_PATH",
                "our MODEL_DIR[/checkpoint_N], a T5X checkpoint or a Hugging Face MT5 folder"),
      PlainFlag("--output_dir", "EVAL_OUTPUT_DIR",
                "folder for results.json, results.md, model_index.yaml, charts/"),
      PlainFlag("--suite", "MIXTURE_OR_TASK_NAME",
                "heldout, heldout_l1, heldout_bundled, dataset(s) or task(s), comma-separated"),
      PlainFlag("--data_dir", "DATA_DIR", "local rows (default: HF hub/cache)"),
      PlainFlag("--spm_model", restore.VOCAB_PATH_BINDING,
                "SentencePiece model (default: the checkpoint's own, else mT5's)"),
      PlainFlag("--batch_size", "BATCH_SIZE", "prompts per batch (default 32)", int),
      PlainFlag("--max_examples", "EVALUATOR_NUM_EXAMPLES",
                "rows per (dataset, config) (default: all)", int),
  )


def _is_model_gin(path: str) -> bool:
  from xmtf_pipeline import gin_config
  return (path.replace("\\", "/").startswith("models/")
          or os.path.dirname(os.path.abspath(path)) == str(gin_config.MODELS_DIR))


def _macro_set(name: str) -> bool:
  from xmtf_pipeline import gin_config
  return gin_config.macro_binding(name) not in (None, "%gin.REQUIRED")


def main(argv: list[str] | None = None, prog: str = "xmtf eval",
         entry: Callable | None = None, description: str = EVAL_DESCRIPTION,
         plain: Sequence[Any] | None = None, run_gin: str = "runs/eval.gin") -> int:
  """T5X-style flags (as ``xmtf train``): --gin_file, --gin_bindings, --gin.NAME=VALUE, plus
  plain flags (``plain``, default eval's) that each append one gin binding."""
  from xmtf_pipeline import checkpoints, distributed, flags, gin_config
  from xmtf_pipeline.interop import hf_import
  from xmtf_pipeline.partitioning import PartitioningError

  argv = list(sys.argv[1:] if argv is None else argv)
  plain = _eval_plain_flags() if plain is None else plain
  parser = flags.build_arg_parser(prog, description)
  group = flags.add_plain_flags(parser, plain)
  group.add_argument("--model", default=None, metavar="NAME",
                     help="model gin (gin/models/NAME.gin or a file; = --gin_file=models/"
                     "NAME.gin); default: the checkpoint's config.json / config.gin")
  group.add_argument("--overwrite", action="store_true",
                     help="replace the outputs of an earlier run in the output folder (refused "
                     "otherwise); other files there are kept")
  try:
    args = parser.parse_args(gin_config.rewrite_gin_args(argv))
  except gin_config.GinConfigError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 2
  # --help has printed and exited above, without TensorFlow; tasks (seqio) brings it.
  from tasks import vocab as vocab_lib
  from tasks.heldout import HeldOutError
  errors = (gin_config.GinConfigError, EvalError, restore.CheckpointContentsError,
            HeldOutError, RankClassificationError,
            checkpoints.CheckpointError, hf_import.HFImportError, params_lib.ParamMismatchError,
            distributed.DistributedError, PartitioningError, FileNotFoundError, ValueError)
  try:
    if args.multiprocess_gpu:  # T5X's flags, as xmtf train: each process scores its share
      distributed.initialize(args.coordinator_address, args.process_count, args.process_index,
                             args.distributed_timeout_s)
    flags.configure_data(args)
    gin_files = list(args.gin_file)
    if args.model:
      gin_files.insert(0, gin_config.model_gin_file(args.model))
    if all(_is_model_gin(f) for f in gin_files):
      gin_files.append(run_gin)
    bindings = [*args.gin_bindings, *flags.plain_bindings(args, plain)]
    gin_config.parse(gin_files, bindings, flags.search_paths(args), finalize=False)
    checkpoint_path = (gin_config.evaluate("%CHECKPOINT_PATH")
                       if _macro_set("CHECKPOINT_PATH") else None)
    if not _macro_set("MODEL_CONFIG") and checkpoint_path:
      # Before the model config is looked for beside it: a mistyped path would otherwise be
      # answered by a request for --model. (With a model given, the entry checks the suite and
      # the settings first, then restore_params says the same.)
      if "://" not in checkpoint_path and not os.path.exists(checkpoint_path):
        raise EvalError(f"CHECKPOINT_PATH {checkpoint_path} does not exist; check --checkpoint.")
      restore.bind_model_config(checkpoint_path)
    gin_config.check_macros()
    run = gin_config.get_configurable(entry or evaluate)
    print(restore.choose_vocabulary(checkpoint_path), flush=True)
    run(**({"overwrite": True} if args.overwrite else {}))  # else gin's value (default False)
  except errors as e:
    # gin appends "In call to configurable ..." to errors raised inside a configurable.
    message = "\n".join(line for line in str(e).splitlines()
                        if not line.strip().startswith("In call to configurable"))
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
  finally:
    vocab_lib.use_checkpoint_vocabulary(None)
  return 0
