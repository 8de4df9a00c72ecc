"""``xmtf bench packing``: what packing buys (``xmtf bench data`` lives in ``bench_data``).

``xmtf bench packing`` tokenizes a task (default: the bundled ``xp3_sample``) or xP3-format JSON
lines (``--jsonl``), reports the length distribution and, for the mT0 recipe (unpacked rows of
``--lengths``) and for seqio-packed rows of the same lengths, the padding fraction, examples per row
and non-pad tokens per row. A row costs the same packed or unpacked (same shapes, same jitted
step), so at equal rows/s the non-pad tokens/s ratio is (real tokens per packed row) / (real
tokens per unpacked row). With ``--measure-steps N`` it also times our real jitted train step
(T5X Adafactor, AVERAGE_PER_SEQUENCE, dropout) on actual batches of both pipelines and checks that
both see the same objective (the loss normalizer equals the number of examples in the batch).

TensorFlow, seqio and JAX are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

DEFAULT_LENGTHS = "inputs=1024,targets=1024"
CPU_MEASURE_LENGTHS = "inputs=256,targets=256"
# The target: mt5-large at 1024/256, unpacked, on one H200 (xmtf bench train).
DEFAULT_GPU_EXAMPLES_PER_S = 124.0
FEATURES = ("inputs", "targets")
MEASURE_BATCHES = 8  # distinct real batches per pipeline, cycled through in the timed steps
ROW_KEYS = {"inputs": "encoder_input_tokens", "targets": "decoder_target_tokens"}


class BenchInputError(ValueError):
  """Input the benchmark cannot use; the message names the file (and line) or the option."""


# ---------------------------------------------------------------------------------------------
# Examples: tokenized with EOS, untruncated.


def parse_lengths(text: str) -> dict[str, int]:
  from xmtf_pipeline.tools.data_inspect import parse_lengths as parse
  try:
    lengths = parse(text)
  except ValueError as e:
    raise BenchInputError(str(e).replace("--feature_lengths", "--lengths")) from None
  missing = [k for k in FEATURES if k not in lengths]
  if missing:
    raise BenchInputError(f"--lengths {text!r}: needs {' and '.join(missing)} "
                          "(e.g. inputs=1024,targets=1024).")
  return {k: lengths[k] for k in FEATURES}


def read_jsonl(paths: Sequence[str], max_examples: int | None = None) -> list[tuple[str, str]]:
  """(inputs, targets) of xP3-format JSON lines; a BenchInputError names the file and line."""
  from tasks.preprocessors import SKIP_HINT, RecordError, validate_record

  records: list[tuple[str, str]] = []
  for path in paths:
    if not os.path.isfile(path):
      raise BenchInputError(f"--jsonl {path}: no such file.")
    opener = gzip.open if path.endswith(".gz") else open
    try:
      with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
          if not line.strip():
            continue
          where = f"{path}:{number}"
          try:
            record = json.loads(line)
          except json.JSONDecodeError as e:
            raise BenchInputError(f"{where}: malformed JSON ({e.msg} at column {e.colno}): "
                                  f"{line.strip()[:80]!r}. xP3 lines are "
                                  '{"inputs": "...", "targets": "..."}.') from None
          try:
            inputs, targets = validate_record(record, where)
          except RecordError as e:
            raise BenchInputError(str(e).replace(f" {SKIP_HINT}", "")) from None
          records.append((inputs, targets))
          if max_examples and len(records) >= max_examples:
            return records
    except (UnicodeDecodeError, OSError, EOFError) as e:
      raise BenchInputError(f"--jsonl {path}: cannot read it as UTF-8 JSON lines "
                            f"({type(e).__name__}: {e}).") from None
  if not records:
    raise BenchInputError(f"--jsonl {', '.join(paths)}: no records.")
  return records


def jsonl_vocabulary():
  """(vocabulary, description): mT5's SentencePiece if MT5_SPM_PATH is set, else the sample's."""
  import seqio

  from tasks import vocab
  path = os.environ.get(vocab.MT5_SPM_ENV)
  if path:
    path = vocab.check_spm_path(path, f"env {vocab.MT5_SPM_ENV}")
    _, extra_ids = vocab.mt5_vocabulary_config(path)
    v = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
    return v, f"mT5 SentencePiece from {vocab.MT5_SPM_ENV}={path} ({v.vocab_size} ids)"
  v = vocab.sample_vocabulary()
  return v, (f"the bundled sample's tiny SentencePiece {vocab.SAMPLE_SPM} ({v.vocab_size} ids; "
             f"set {vocab.MT5_SPM_ENV} to mT5's model for mT5 token counts)")


def tokenize(records: Sequence[tuple[str, str]], vocabulary) -> list[dict[str, list[int]]]:
  """seqio's tokenize + EOS (append_eos_after_trim, before any trimming)."""
  eos = vocabulary.eos_id
  return [{"inputs": list(vocabulary.encode(i)) + [eos], "targets": list(vocabulary.encode(t)) + [eos]}
          for i, t in records]


def task_examples(name: str, max_examples: int | None, split: str = "train", seed: int = 0):
  """(examples, vocabulary, description) of a registered task/mixture, as the trainer reads it."""
  import seqio

  from xmtf_pipeline.tools.data_inspect import _import_tasks
  _import_tasks(())
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError:
    raise BenchInputError(f"--task {name!r} is not a registered task or mixture "
                          "(tasks.xp3 and tasks.mc4 are imported).") from None
  missing = [k for k in FEATURES if k not in provider.output_features]
  if missing:
    raise BenchInputError(f"--task {name}: has no {' or '.join(missing)} feature.")
  ds = provider.get_dataset(sequence_length=None, split=split, shuffle=True, seed=seed,
                            num_epochs=1, trim_output_features=False)
  if max_examples:
    ds = ds.take(max_examples)
  examples = [{k: [int(i) for i in ex[k]] for k in FEATURES} for ex in ds.as_numpy_iterator()]
  if not examples:
    raise BenchInputError(f"--task {name}: split {split!r} has no examples.")
  vocabulary = provider.output_features["inputs"].vocabulary
  spm = getattr(vocabulary, "sentencepiece_model_file", "") or str(vocabulary)
  return examples, vocabulary, f"the task's vocabulary {spm} ({vocabulary.vocab_size} ids)"


# ---------------------------------------------------------------------------------------------
# Rows: the real seqio feature converter, unpacked (mT0 recipe) and packed.


def trim(examples: Sequence[Mapping[str, Sequence[int]]], lengths: Mapping[str, int],
         eos_id: int = 1) -> list[dict[str, np.ndarray]]:
  """seqio's append_eos_after_trim on untruncated examples that already end in EOS."""
  out = []
  for ex in examples:
    row = {}
    for key in FEATURES:
      ids, limit = list(ex[key]), lengths[key]
      row[key] = np.array(ids if len(ids) <= limit else ids[:limit - 1] + [eos_id], np.int32)
    out.append(row)
  return out


def converted_batches(trimmed: Sequence[Mapping[str, np.ndarray]], lengths: Mapping[str, int],
                      pack: bool, batch: int = 256) -> Iterator[dict[str, np.ndarray]]:
  """Batches of rows out of seqio's EncDecFeatureConverter(pack=...), as the trainer gets them."""
  import seqio
  import tensorflow as tf

  def gen():
    yield from trimmed

  ds = tf.data.Dataset.from_generator(
      gen, output_signature={k: tf.TensorSpec([None], tf.int32) for k in FEATURES})
  ds = seqio.EncDecFeatureConverter(pack=pack)(ds, dict(lengths)).batch(batch)
  yield from ds.as_numpy_iterator()


def _rows_summary(rows: int, real: Mapping[str, int], examples: int,
                  lengths: Mapping[str, int]) -> dict:
  total = sum(real.values())
  out = {"rows": rows, "examples": examples, "examples_per_row": examples / rows,
         "real_tokens": total, "real_tokens_per_row": total / rows,
         "padding_fraction": 1 - total / (rows * sum(lengths.values()))}
  for key in FEATURES:
    out[f"padding_fraction_{key}"] = 1 - real[key] / (rows * lengths[key])
  return out


def length_distribution(examples: Sequence[Mapping[str, Sequence[int]]],
                        lengths: Mapping[str, int]) -> dict[str, dict[str, float]]:
  out = {}
  for key in FEATURES:
    lens = np.array([len(ex[key]) for ex in examples])
    out[key] = {"mean": float(lens.mean()), "median": float(np.median(lens)),
                "p90": float(np.percentile(lens, 90)), "p99": float(np.percentile(lens, 99)),
                "max": int(lens.max()), "truncated": float(np.mean(lens > lengths[key]))}
  return out


def packing_report(examples: Sequence[Mapping[str, Sequence[int]]], lengths: Mapping[str, int],
                   eos_id: int = 1, keep_rows: int = 0) -> dict:
  """Length distribution, unpacked vs packed rows, and the analytic non-pad tokens/s ratio.

  Unpacked figures are computed from the lengths (one example per row); packed ones are counted
  on seqio's packed rows. ``keep_rows`` rows of each are returned (``_rows``) for timing.
  """
  trimmed = trim(examples, lengths, eos_id)
  n = len(trimmed)
  real = {k: int(sum(len(ex[k]) for ex in trimmed)) for k in FEATURES}
  unpacked = _rows_summary(n, real, n, lengths)
  kept = {}
  if keep_rows:
    kept["unpacked"] = _concat(converted_batches(trimmed[:keep_rows], lengths, pack=False))
  rows, segments = 0, 0
  counted = dict.fromkeys(FEATURES, 0)
  packed_rows = []
  for b in converted_batches(trimmed, lengths, pack=True):
    rows += len(b["encoder_input_tokens"])
    segments += count_segments(b)
    for key in FEATURES:
      counted[key] += int(np.count_nonzero(b[ROW_KEYS[key]]))
    if keep_rows and sum(len(x["encoder_input_tokens"]) for x in packed_rows) < keep_rows:
      packed_rows.append(b)
  if segments != n or counted != real:
    raise AssertionError(f"packing lost examples: {n} in, {segments} segments out; "
                         f"tokens {real} in, {counted} out")
  packed = _rows_summary(rows, counted, n, lengths)
  if keep_rows:
    kept["packed"] = {k: v[:keep_rows] for k, v in _concat(iter(packed_rows)).items()}
  return {"lengths": dict(lengths), "examples": n,
          "length_distribution": length_distribution(examples, lengths),
          "unpacked": unpacked, "packed": packed,
          "ratio_analytic": packed["real_tokens_per_row"] / unpacked["real_tokens_per_row"],
          "_rows": kept}


def count_segments(batch: Mapping[str, np.ndarray]) -> int:
  """Examples in a batch: its rows unpacked, the distinct segment ids of each row packed."""
  seg = batch.get("decoder_segment_ids")
  if seg is None:
    return int(np.any(batch["decoder_target_tokens"] > 0, axis=1).sum())
  return int(sum(len(np.unique(r[r > 0])) for r in seg))


def _concat(batches: Iterator[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  parts = list(batches)
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------------------------------------
# Measured: our jitted train step on real batches of both pipelines.


def _auto_defaults(model: str | None, measure_lengths: str | None, lengths: Mapping[str, int],
                   batch: int | None, dtype: str | None
                   ) -> tuple[str, dict[str, int], int, str, str]:
  """Measurement defaults: mt5_large at --lengths on a GPU; on CPU mt5_tiny, at most 256/256."""
  import jax
  backend = jax.default_backend()
  on_cpu = backend == "cpu"
  if measure_lengths:
    mlengths = parse_lengths(measure_lengths)
  elif on_cpu:
    cap = parse_lengths(CPU_MEASURE_LENGTHS)
    mlengths = {k: min(v, cap[k]) for k, v in lengths.items()}
  else:
    mlengths = dict(lengths)
  return (model or ("mt5_tiny" if on_cpu else "mt5_large"), mlengths,
          batch or 8, dtype or ("float32" if on_cpu else "bfloat16"), backend)


def measure_train_steps(model_name: str, rows: Mapping[str, Mapping[str, np.ndarray]], batch: int,
                        steps: int, dtype: str, vocab_size: int, rounds: int = 2) -> dict:
  """Times the jitted train step on ``batch``-row batches of each pipeline's real rows.

  Both steps share one initial state and alternate in ``rounds`` blocks (a shared machine's
  noise hits both alike). Non-pad tokens/s counts the real tokens of the batches stepped on.
  """
  import dataclasses

  import jax

  from xmtf_pipeline import models, schedules, trainer
  from xmtf_pipeline.adafactor import Adafactor
  from xmtf_pipeline.partitioning import Partitioner
  from xmtf_pipeline.tools.bench_workload import model_config

  cfg = model_config(model_name, dtype=dtype)
  if vocab_size > cfg.vocab_size:  # e.g. mT5's SentencePiece with mt5_tiny
    cfg = dataclasses.replace(cfg, vocab_size=-(-vocab_size // 128) * 128)
  model = models.EncoderDecoderModel(cfg, z_loss=1e-4,
                                     loss_normalizing_factor="AVERAGE_PER_SEQUENCE")
  opt = Adafactor()
  lr = schedules.create_learning_rate_scheduler("constant", base_learning_rate=1e-3)
  part = Partitioner().with_devices(jax.devices()[:1])
  state, shardings = trainer.init_state(model, opt, part, jax.random.PRNGKey(0))
  rng = jax.random.PRNGKey(1)
  normalizer_fn = jax.jit(lambda b: model.normalizer_and_weights(b)[0])
  runs = {}
  for name, r in rows.items():
    n_rows = len(r["encoder_input_tokens"])
    reps = -(-batch // n_rows)  # too few rows (a tiny file): repeat them to fill one batch
    r = {k: np.concatenate([v] * reps) for k, v in r.items()} if reps > 1 else r
    host = [{k: v[i:i + batch] for k, v in r.items()}
            for i in range(0, len(r["encoder_input_tokens"]) - batch + 1, batch)][:MEASURE_BATCHES]
    checks = []
    for b in host:
      checks.append((float(normalizer_fn(b)), count_segments(b)))
    runs[name] = {
        "step": trainer.jit_train_step(model, opt, lr, 1, part, shardings),
        "device": [part.shard_batch(b) for b in host],
        "nonpad": [sum(int(np.count_nonzero(b[k])) for k in ROW_KEYS.values()) for b in host],
        "examples": [count_segments(b) for b in host], "checks": checks,
        "time": 0.0, "steps": 0, "tokens": 0, "ex": 0, "rows_repeated": reps > 1}
  for run in runs.values():  # compile + 2 warm-up steps each
    t = time.perf_counter()
    state, stats = run["step"](state, run["device"][0], rng)
    jax.block_until_ready(stats["loss"])
    run["compile_s"] = time.perf_counter() - t
    for _ in range(2):
      state, stats = run["step"](state, run["device"][0], rng)
    jax.block_until_ready(stats["loss"])
  per_round = max(1, steps // rounds)
  for _ in range(rounds):
    for run in runs.values():
      t = time.perf_counter()
      for i in range(per_round):
        j = i % len(run["device"])
        state, stats = run["step"](state, run["device"][j], rng)
        run["tokens"] += run["nonpad"][j]
        run["ex"] += run["examples"][j]
      jax.block_until_ready(state.params)
      run["time"] += time.perf_counter() - t
      run["steps"] += per_round
      run["loss"] = float(stats["loss"])
  out = {"model": model_name, "dtype": dtype, "vocab_size": cfg.vocab_size, "batch_rows": batch,
         "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
         "load_average_1min": os.getloadavg()[0]}
  for name, run in runs.items():
    out[name] = {
        "steps": run["steps"], "step_s": run["time"] / run["steps"],
        "compile_s": run["compile_s"], "rows_per_s": batch * run["steps"] / run["time"],
        "examples_per_s": run["ex"] / run["time"], "nonpad_tokens_per_s": run["tokens"] / run["time"],
        "examples_per_batch": run["examples"][0], "loss": run["loss"],
        "normalizer_equals_examples": all(abs(a - b) < 1e-3 * b for a, b in run["checks"]),
        "normalizer_checks": run["checks"], "rows_repeated": run["rows_repeated"]}
  out["ratio_measured"] = out["packed"]["nonpad_tokens_per_s"] / out["unpacked"]["nonpad_tokens_per_s"]
  return out


# ---------------------------------------------------------------------------------------------
# Printing.


def fmt_lengths(lengths: Mapping[str, int]) -> str:
  return f"{lengths['inputs']}/{lengths['targets']}"


def format_report(report: Mapping, source: str, vocab_desc: str) -> str:
  lengths = report["lengths"]
  lines = [f"{source}: {report['examples']} examples; tokens by {vocab_desc}",
           f"lengths inputs/targets = {fmt_lengths(lengths)}",
           "length distribution (tokens incl. EOS, before truncation):",
           f"  {'feature':<9}{'length':>7}{'mean':>9}{'median':>8}{'p90':>8}{'p99':>8}{'max':>8}"
           f"{'truncated':>11}"]
  for key in FEATURES:
    d = report["length_distribution"][key]
    lines.append(f"  {key:<9}{lengths[key]:>7}{d['mean']:>9.1f}{d['median']:>8.0f}{d['p90']:>8.0f}"
                 f"{d['p99']:>8.0f}{d['max']:>8}{d['truncated']:>10.2%}")
  lines.append(f"  {'':<24}{'rows':>8}{'ex/row':>9}{'pad inputs':>12}{'pad targets':>13}"
               f"{'pad total':>11}{'non-pad tok/row':>17}")
  for label, key in (("unpacked (mT0 recipe)", "unpacked"), ("packed (seqio)", "packed")):
    r = report[key]
    lines.append(f"  {label:<24}{r['rows']:>8}{r['examples_per_row']:>9.2f}"
                 f"{r['padding_fraction_inputs']:>12.2%}{r['padding_fraction_targets']:>13.2%}"
                 f"{r['padding_fraction']:>11.2%}{r['real_tokens_per_row']:>17.1f}")
  lines.append(f"non-pad tokens/s, packed / unpacked at equal rows/s (analytic, same step "
               f"cost per row): {report['ratio_analytic']:.2f}x")
  if "flops" in report:
    f = report["flops"]
    lines.append(f"{f['model']} {fmt_lengths(lengths)}: {f['tflop_per_row']:.2f} TFLOP per row "
                 f"(fwd+bwd); per trained example unpacked {f['tflop_per_example_unpacked']:.3f}, "
                 f"packed {f['tflop_per_example_packed']:.3f}")
  return "\n".join(lines)


def format_measured(m: Mapping, lengths: Mapping[str, int], analytic: float) -> str:
  lines = [f"measured: {m['model']} ({m['dtype']}, vocab {m['vocab_size']}) on {m['backend']} "
           f"({m['device']}), lengths {fmt_lengths(lengths)}, {m['batch_rows']} rows per batch, "
           f"{m['unpacked']['steps']} timed steps each, AVERAGE_PER_SEQUENCE; load average "
           f"{m['load_average_1min']:.2f} at the end",
           f"  {'':<10}{'step s':>9}{'rows/s':>9}{'ex/batch':>10}{'ex/s':>10}{'non-pad tok/s':>15}"
           f"{'loss':>8}  normalizer == examples"]
  for key in ("unpacked", "packed"):
    r = m[key]
    note = " (rows repeated to fill a batch)" if r["rows_repeated"] else ""
    lines.append(f"  {key:<10}{r['step_s']:>9.4f}{r['rows_per_s']:>9.1f}{r['examples_per_batch']:>10}"
                 f"{r['examples_per_s']:>10.1f}{r['nonpad_tokens_per_s']:>15.0f}{r['loss']:>8.3f}"
                 f"  {'yes' if r['normalizer_equals_examples'] else 'NO'}{note}")
  lines.append(f"measured non-pad tokens/s ratio packed / unpacked: {m['ratio_measured']:.2f}x "
               f"(analytic at these lengths: {analytic:.2f}x)")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Commands.


def quiet_tf() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _load(args) -> tuple[list[dict[str, list[int]]], object, str, str]:
  if args.jsonl:
    from xmtf_pipeline.tools.data_inspect import _import_tasks
    _import_tasks(())
    records = read_jsonl(args.jsonl, args.max_examples)
    vocabulary, desc = jsonl_vocabulary()
    paths = args.jsonl if len(args.jsonl) <= 3 else [*args.jsonl[:2], f"... ({len(args.jsonl)} files)"]
    return tokenize(records, vocabulary), vocabulary, desc, f"--jsonl {', '.join(paths)}"
  examples, vocabulary, desc = task_examples(args.task, args.max_examples, seed=args.seed)
  return examples, vocabulary, desc, f"task {args.task} (train split)"


def main_packing(argv: Sequence[str]) -> int:
  p = argparse.ArgumentParser(
      prog="xmtf bench packing",
      description="Padding and non-pad tokens/s of the unpacked mT0 recipe vs seqio packing.")
  src = p.add_mutually_exclusive_group()
  src.add_argument("--task", default="xp3_sample", help="SeqIO task or mixture (default: the "
                   "bundled xp3_sample)")
  src.add_argument("--jsonl", nargs="+", metavar="PATH",
                   help='xP3-format JSON lines ({"inputs": ..., "targets": ...}; .gz too)')
  p.add_argument("--lengths", default=DEFAULT_LENGTHS, help=f"default {DEFAULT_LENGTHS} (mT0's)")
  p.add_argument("--max-examples", type=int, default=20_000, help="examples read (0: all)")
  p.add_argument("--model", default=None,
                 help="model for the FLOP count (default mt5_large) and for --measure-steps "
                      "(default: mt5_large on a GPU, mt5_tiny on CPU)")
  p.add_argument("--measure-steps", type=int, default=0,
                 help="time N train steps on real batches of each pipeline (0: analytic only)")
  p.add_argument("--measure-lengths", default=None,
                 help=f"lengths for the measurement (default: --lengths on a GPU; on CPU "
                      f"--lengths capped at {CPU_MEASURE_LENGTHS})")
  p.add_argument("--batch", type=int, default=None,
                 help="rows per measured batch (default 8; the same for both pipelines)")
  p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                 help="measured model's dtype (default float32 on CPU, bfloat16 on a GPU)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--json", help="write the results here as JSON")
  args = p.parse_args(argv)
  quiet_tf()
  from xmtf_pipeline.tools.bench_workload import SIZES
  if args.model is not None and args.model not in SIZES:
    print(f"xmtf bench packing: error: --model {args.model!r}: one of {', '.join(sorted(SIZES))}",
          file=sys.stderr)
    return 2
  try:
    lengths = parse_lengths(args.lengths)
    examples, vocabulary, vocab_desc, source = _load(args)
  except BenchInputError as e:
    print(f"xmtf bench packing: error: {e}", file=sys.stderr)
    return 2
  from xmtf_pipeline.tools.bench_workload import model_config, train_flops_per_example

  eos = vocabulary.eos_id
  report = packing_report(examples, lengths, eos)
  flops_model = args.model or "mt5_large"
  per_row = train_flops_per_example(model_config(flops_model), lengths["inputs"],
                                    lengths["targets"]) / 1e12
  report["flops"] = {"model": flops_model, "tflop_per_row": per_row,
                     "tflop_per_example_unpacked": per_row,
                     "tflop_per_example_packed": per_row / report["packed"]["examples_per_row"]}
  report.pop("_rows")
  print(format_report(report, source, vocab_desc), flush=True)
  result = {"source": source, "vocabulary": vocab_desc, **report}
  if args.measure_steps > 0:
    try:
      model, mlengths, batch, dtype, _ = _auto_defaults(
          args.model, args.measure_lengths, lengths, args.batch, args.dtype)
    except BenchInputError as e:
      print(f"xmtf bench packing: error: {e}", file=sys.stderr)
      return 2
    # Enough rows for up to MEASURE_BATCHES distinct batches of each pipeline.
    mreport = packing_report(examples, mlengths, eos, keep_rows=MEASURE_BATCHES * batch)
    m = measure_train_steps(model, mreport["_rows"], batch, args.measure_steps, dtype,
                            vocabulary.vocab_size)
    m.update(lengths=mlengths, ratio_analytic=mreport["ratio_analytic"],
             unpacked_padding_fraction=mreport["unpacked"]["padding_fraction"],
             packed_padding_fraction=mreport["packed"]["padding_fraction"],
             packed_examples_per_row=mreport["packed"]["examples_per_row"])
    print(format_measured(m, mlengths, mreport["ratio_analytic"]))
    result["measured"] = m
    if not (m["unpacked"]["normalizer_equals_examples"] and m["packed"]["normalizer_equals_examples"]):
      print("xmtf bench packing: error: the AVERAGE_PER_SEQUENCE normalizer is not the number of "
            "examples in a batch; packed and unpacked do not see the same objective.",
            file=sys.stderr)
      write_json(args.json, result)
      return 1
  print("JSON:" + json.dumps(result))
  write_json(args.json, result)
  return 0


def write_json(path: str | None, result: Mapping) -> None:
  if path:
    with open(path, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  sys.exit(main_packing(sys.argv[1:]))
