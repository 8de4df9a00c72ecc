"""``xmtf data``: look at what a SeqIO task or mixture feeds the model, and measure it.

Prints N preprocessed examples (decoded text and token ids) and, with ``--stats M``, statistics
over M examples: input/target length percentiles (EOS included, before truncation), truncation
rate and padding fraction for the given feature lengths, unpacked vs packed (seqio's
EncDecFeatureConverter), and, for a mixture, the rate each task actually got vs the requested one.

This module imports TensorFlow and the task registries only when the command runs, so
``xmtf --help`` stays fast.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_MODULES = ("tasks.xp3", "tasks.mc4")
DEFAULT_LENGTHS = "inputs=1024,targets=1024"


def parse_lengths(text: str) -> dict[str, int]:
  """``inputs=1024,targets=256`` or T5X's ``{'inputs': 1024, 'targets': 256}``."""
  text = text.strip()
  try:
    if text.startswith("{"):
      lengths = ast.literal_eval(text)
    else:
      lengths = {k.strip(): int(v) for k, v in (part.split("=") for part in text.split(","))}
  except (ValueError, SyntaxError) as e:
    raise ValueError(
        f"--feature_lengths {text!r}: write inputs=1024,targets=1024 or "
        "\"{'inputs': 1024, 'targets': 1024}\".") from e
  if not isinstance(lengths, dict) or not all(
      isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in lengths.values()):
    raise ValueError(f"--feature_lengths {text!r}: every length must be a positive integer.")
  return lengths


def add_parser(subparsers) -> argparse.ArgumentParser:
  """Registers ``xmtf data`` on the ``xmtf`` subcommand parser."""
  p = subparsers.add_parser(
      "data", help="print preprocessed examples of a SeqIO task/mixture and data statistics",
      description=__doc__.split("\n\n")[0])
  p.add_argument("name", nargs="?", default="xp3_sample",
                 help="task or mixture name (default: xp3_sample, the bundled sample)")
  p.add_argument("-n", "--num_examples", type=int, default=3, help="examples to print")
  p.add_argument("--split", default="train", help="split (train or validation)")
  p.add_argument("--feature_lengths", default=DEFAULT_LENGTHS,
                 help="TASK_FEATURE_LENGTHS for truncation/padding statistics "
                      f"(default {DEFAULT_LENGTHS}, mT0's)")
  p.add_argument("--stats", type=int, default=0, metavar="M",
                 help="compute statistics over M examples (0: none)")
  p.add_argument("--seed", type=int, default=0, help="shuffle/sampling seed")
  p.add_argument("--no_shuffle", action="store_true", help="read in file order")
  p.add_argument("--max_ids", type=int, default=48, help="token ids printed per feature")
  p.add_argument("--module", action="append", default=[],
                 help=f"extra module that registers tasks (always: {', '.join(DEFAULT_MODULES)})")
  p.add_argument("--gin_file", action="append", default=[], help="gin file(s) to parse")
  p.add_argument("--gin_bindings", action="append", default=[],
                 help="gin bindings, e.g. \"tasks.xp3.xp3_dir.path = '/data/xP3'\"")
  p.set_defaults(func=run)
  return p


def _import_tasks(modules: Sequence[str]) -> None:
  import importlib

  try:
    importlib.import_module("tasks")
  except ModuleNotFoundError:
    # An editable install made before tasks/ existed does not map it; it sits next to this package.
    root = Path(__file__).resolve().parents[2]
    if (root / "tasks" / "__init__.py").is_file():
      sys.path.insert(0, str(root))
  for module in (*DEFAULT_MODULES, *modules):
    importlib.import_module(module)


def _ids_text(ids, max_ids: int) -> str:
  shown = " ".join(str(int(i)) for i in ids[:max_ids])
  return shown + (f" ... (+{len(ids) - max_ids})" if len(ids) > max_ids else "")


def _decode(vocabulary, ids) -> str:
  ids = [int(i) for i in ids if int(i) not in (0, vocabulary.eos_id)]
  return vocabulary.decode(ids)


def length_stats(examples: Sequence[Mapping[str, Sequence[int]]], lengths: Mapping[str, int],
                 eos_id: int = 1) -> dict[str, dict[str, float]]:
  """Per feature: percentiles of untruncated lengths, truncation rate, padding unpacked/packed."""
  import numpy as np
  import seqio
  import tensorflow as tf

  out: dict[str, dict[str, float]] = {}
  n = len(examples)
  for key, limit in lengths.items():
    lens = np.array([len(ex[key]) for ex in examples])
    kept = np.minimum(lens, limit)
    out[key] = {
        "p50": float(np.percentile(lens, 50)), "p90": float(np.percentile(lens, 90)),
        "p99": float(np.percentile(lens, 99)), "max": float(lens.max()),
        "mean": float(lens.mean()), "truncated": float(np.mean(lens > limit)),
        "pad_unpacked": float(1 - kept.sum() / (n * limit)),
    }

  def trimmed():
    for ex in examples:
      row = {}
      for key, limit in lengths.items():
        ids = list(ex[key])
        row[key] = np.array(ids if len(ids) <= limit else ids[:limit - 1] + [eos_id], np.int32)
      yield row

  ds = tf.data.Dataset.from_generator(
      trimmed, output_signature={k: tf.TensorSpec([None], tf.int32) for k in lengths})
  packed = seqio.EncDecFeatureConverter(pack=True)(ds, dict(lengths))
  rows, nonzero = 0, {"inputs": 0, "targets": 0}
  for b in packed.as_numpy_iterator():
    rows += 1
    nonzero["inputs"] += int(np.count_nonzero(b["encoder_input_tokens"]))
    nonzero["targets"] += int(np.count_nonzero(b["decoder_target_tokens"]))
  for key in lengths:
    if key in nonzero and rows:
      out[key]["pad_packed"] = float(1 - nonzero[key] / (rows * lengths[key]))
  out["_packing"] = {"examples": float(n), "packed_rows": float(rows),
                     "examples_per_row": float(n / rows) if rows else 0.0}
  return out


def format_stats(stats: Mapping[str, Mapping[str, float]], lengths: Mapping[str, int]) -> str:
  lines = ["feature   length  p50    p90    p99    max    mean    truncated  pad(unpacked)  "
           "pad(packed)"]
  for key, limit in lengths.items():
    s = stats[key]
    lines.append(
        f"{key:<9} {limit:>6}  {s['p50']:<6.0f} {s['p90']:<6.0f} {s['p99']:<6.0f} "
        f"{s['max']:<6.0f} {s['mean']:<7.1f} {100 * s['truncated']:>8.2f}%  "
        f"{100 * s['pad_unpacked']:>12.2f}%  {100 * s.get('pad_packed', float('nan')):>10.2f}%")
  p = stats["_packing"]
  lines.append(f"packing: {p['examples']:.0f} examples -> {p['packed_rows']:.0f} rows "
               f"({p['examples_per_row']:.2f} examples per row)")
  return "\n".join(lines)


def inspect(name: str, num_examples: int = 3, split: str = "train",
            lengths: Mapping[str, int] | None = None, stats: int = 0, seed: int = 0,
            shuffle: bool = True, max_ids: int = 48, out=None) -> int:
  """The body of ``xmtf data`` (tasks must be registered already)."""
  import seqio

  from tasks import mixtures

  out = out or sys.stdout
  lengths = dict(lengths or parse_lengths(DEFAULT_LENGTHS))
  provider = seqio.get_mixture_or_task(name)
  features = provider.output_features
  kind = "mixture" if isinstance(provider, seqio.Mixture) else "task"
  ntasks = len(provider.tasks) if kind == "mixture" else 1
  print(f"{kind} {name}: {ntasks} task(s), split {split}, features {sorted(features)}", file=out)
  for key, feature in features.items():
    print(f"  {key}: {feature.vocabulary} (eos {'yes' if feature.add_eos else 'no'})", file=out)
  want = max(num_examples, stats)
  examples = []
  # Untruncated (sequence_length None: EOS appended, nothing trimmed) for the length statistics.
  ds = provider.get_dataset(sequence_length=None, split=split, shuffle=shuffle, seed=seed,
                            num_epochs=1, trim_output_features=False)
  for ex in ds.take(want).as_numpy_iterator():
    examples.append({k: [int(i) for i in ex[k]] for k in features if k in ex})
  for i, ex in enumerate(examples[:num_examples]):
    print(f"\n--- example {i}", file=out)
    for key in features:
      if key not in ex:
        continue
      vocabulary = features[key].vocabulary
      print(f"{key} ({len(ex[key])} tokens): {_decode(vocabulary, ex[key])!r}", file=out)
      print(f"  ids: {_ids_text(ex[key], max_ids)}", file=out)
  if stats:
    if len(examples) < stats:
      print(f"\n(note: the split has only {len(examples)} examples)", file=out)
    keys = {k: v for k, v in lengths.items() if k in features}
    eos = next(iter(features.values())).vocabulary.eos_id
    print(f"\nstatistics over {len(examples)} examples, feature lengths {keys}:", file=out)
    print(format_stats(length_stats(examples, keys, eos), keys), file=out)
    if kind == "mixture":
      realised = mixtures.realised_rates(provider, stats, split=split, seed=seed)
      print(f"\nmixture rates over {stats} sampled examples (seed {seed}):", file=out)
      print(mixtures.rate_table(provider, realised), file=out)
  return 0


def run(args: argparse.Namespace) -> int:
  """Entry point of ``xmtf data``: errors are printed (naming file/field/flag), exit status 2."""
  try:
    lengths = parse_lengths(args.feature_lengths)
    _import_tasks(args.module)
    if args.gin_file or args.gin_bindings:
      import gin

      gin.parse_config_files_and_bindings(args.gin_file, args.gin_bindings,
                                          finalize_config=False)
    return inspect(args.name, args.num_examples, args.split, lengths, args.stats, args.seed,
                   not args.no_shuffle, args.max_ids)
  except Exception as e:  # report every data error the same way, without a TF traceback
    from xmtf_pipeline.input_pipeline import error_summary
    print(f"xmtf data: error: {type(e).__name__}: {error_summary(e)}", file=sys.stderr)
    return 2
