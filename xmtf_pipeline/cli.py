"""The ``xmtf`` command: one subcommand per job, each importing only what it needs."""

from __future__ import annotations

import argparse
import os
import sys

# TensorFlow (under seqio) is chatty on import; keep it to errors unless asked.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _demo(args: argparse.Namespace) -> int:
  from xmtf_pipeline.tools import demo
  return demo.main(model=args.model, model_dir=args.model_dir, steps=args.steps,
                   batch_size=args.batch_size, eval_examples=args.eval_examples)


def _params(args: argparse.Namespace) -> int:
  from xmtf_pipeline import gin_config, params
  config = gin_config.load_model_config(args.model, args.gin_bindings)
  print(params.param_table(config))
  return 0


def _conversion_errors():
  """Errors of the checkpoint converters that are the user's input, not a bug."""
  from xmtf_pipeline.checkpoints import CheckpointError
  from xmtf_pipeline.interop.hf_import import HFImportError
  from xmtf_pipeline.interop.run_config import RunConfigError  # HFExportError is one
  from xmtf_pipeline.interop.safetensors_io import SafetensorsError
  return (CheckpointError, RunConfigError, HFImportError, SafetensorsError, FileExistsError)


def _export_hf(args: argparse.Namespace) -> int:
  from xmtf_pipeline import gin_config
  from xmtf_pipeline.interop import hf_export
  try:
    config = (gin_config.load_model_config(args.model, args.gin_bindings)
              if args.model else None)
    hf_export.export(args.checkpoint_dir, args.output_dir, dtype=args.dtype,
                     overwrite=args.overwrite, spm_model=args.spm_model, extra_ids=args.extra_ids,
                     model_config=config, max_shard_size=args.max_shard_size,
                     eval_results=args.eval_results)
  except _conversion_errors() as e:
    print(f"xmtf export-hf: error: {e}", file=sys.stderr)
    return 2
  return 0


def _import_hf(args: argparse.Namespace) -> int:
  from xmtf_pipeline import gin_config
  from xmtf_pipeline.interop import hf_import
  try:
    config = (gin_config.load_model_config(args.model, args.gin_bindings)
              if args.model else None)
    path = hf_import.import_hf(args.hf_dir, args.output_dir, overwrite=args.overwrite,
                               config=config, step=args.step)
  except _conversion_errors() as e:
    print(f"xmtf import-hf: error: {e}", file=sys.stderr)
    return 2
  print(f"Wrote {path} (T5X checkpoint: parameters from {args.hf_dir}, Adafactor at zero, "
        f"step {args.step}). "
        f"Use it as --gin.INITIAL_CHECKPOINT_PATH=\\\"{path}\\\".")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="xmtf", description="Reproduce mT0: T5X-style training and SeqIO tasks on JAX.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

  p = sub.add_parser("demo", help="the main job on the embedded default (tiny mT5, CPU)")
  p.add_argument("--model", default="mt5_tiny", help="model name (gin/models/NAME.gin) or gin file")
  p.add_argument("--model_dir", default=None,
                 help="where checkpoints and logs go (default: $XDG_CACHE_HOME or ~/.cache, "
                 "then xmtf/demo)")
  p.add_argument("--steps", type=int, default=400, help="training steps")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--eval_examples", type=int, default=None, metavar="N",
                 help="evaluate on the first N bundled rows of each dataset (default: all)")
  p.set_defaults(func=_demo)

  # Commands with their own T5X-style flag parsers: listed here, dispatched in main().
  for name, help_text in _OWN_FLAGS.items():
    sub.add_parser(name, help=help_text, add_help=False)

  p = sub.add_parser("params", help="print a model's parameter table (no allocation)")
  p.add_argument("--model", default="mt5_tiny", help="model name (gin/models/NAME.gin) or gin file")
  p.add_argument("--gin_bindings", action="append", default=[], help="extra gin bindings")
  p.set_defaults(func=_params)
  __import__("xmtf_pipeline.tools.data_inspect", fromlist=["add_parser"]).add_parser(sub)

  p = sub.add_parser("export-hf", help="export a checkpoint as a Hugging Face MT5 directory")
  p.add_argument("--checkpoint_dir", required=True,
                 help="MODEL_DIR/checkpoint_N (ours or native T5X; MODEL_DIR = newest)")
  p.add_argument("--output_dir", required=True, help="the HF directory to write")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an earlier export/import in output_dir (never another folder)")
  p.add_argument("--spm_model", default=None,
                 help="SentencePiece model (default: the run's, from MODEL_DIR/config.gin)")
  p.add_argument("--extra_ids", type=int, default=None,
                 help="sentinels appended to the SentencePiece vocabulary (default: inferred)")
  p.add_argument("--model", default=None,
                 help="model gin (name or file) if MODEL_DIR/config.gin is absent")
  p.add_argument("--gin_bindings", action="append", default=[], help="bindings for --model")
  p.add_argument("--max_shard_size", default="5GB",
                 help="shard model.safetensors above this size (e.g. 5GB, 500MB)")
  p.add_argument("--eval_results", default=None,
                 help="results.md / model_index.yaml (or their folder) for the model card")
  p.set_defaults(func=_export_hf)

  p = sub.add_parser("import-hf",
                     help="convert a Hugging Face MT5 directory to a T5X initial checkpoint")
  p.add_argument("--hf_dir", required=True,
                 help="HF directory (model.safetensors or pytorch_model.bin, single or sharded)")
  p.add_argument("--output_dir", required=True,
                 help="writes OUTPUT_DIR/checkpoint_<step> (T5X layout, for INITIAL_CHECKPOINT_PATH)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an earlier export/import in output_dir (never another folder)")
  p.add_argument("--model", default=None,
                 help="model gin (name or file) that config.json must match")
  p.add_argument("--gin_bindings", action="append", default=[], help="bindings for --model")
  p.add_argument("--step", type=int, default=0, help="step of the written checkpoint")
  p.set_defaults(func=_import_hf)
  return parser


_OWN_FLAGS = {
    "train": "train/finetune with gin configs (T5X flags: xmtf train --help)",
    "plan": "per-device memory of a run config on a mesh (xmtf plan --help)",
    "bench": "training throughput and MFU, optionally beside HF (xmtf bench train --help)",
    "eval": "held-out zero-shot suite by rank classification (T5X eval.gin flags)",
    "infer": "generate (greedy/beam/sampling) or score with a checkpoint (T5X infer.gin flags)",
    "select-checkpoint": "pick the best checkpoint in MODEL_DIR by a validation score",
}
# Evaluation commands with their own parsers: module and function, imported on use.
_EVAL_MAINS = {
    "eval": ("xmtf_pipeline.evaluation", "main"),
    "infer": ("xmtf_pipeline.inference", "main"),
    "select-checkpoint": ("xmtf_pipeline.checkpoint_selection", "main"),
}


# Commands whose import path has no TensorFlow (bench is tested to stay so).
_NO_TENSORFLOW = {"bench", "params"}


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    return _dispatch(argv)
  except KeyboardInterrupt:
    # Training saves on its own first Ctrl-C; anywhere else (evaluation, export, data) there
    # is nothing to save, and a traceback would only hide what happened.
    command = argv[0] if argv else ""
    print(f"xmtf {command}: interrupted (Ctrl-C); stopped.", file=sys.stderr)
    return 130


def _dispatch(argv: list[str]) -> int:
  # No command's --help needs TensorFlow (tests/test_startup_output.py): skipping its import
  # makes `xmtf eval --help` take 1.4 s instead of 7.8.
  wants_help = bool({"-h", "--help"} & set(argv))
  if argv and argv[0] not in _NO_TENSORFLOW and not wants_help:
    from xmtf_pipeline import tensorflow_import
    tensorflow_import.import_quietly()
  if argv and argv[0] == "train":
    from xmtf_pipeline import train
    return train.main(argv[1:])
  if argv and argv[0] in _EVAL_MAINS:
    import importlib
    module, fn = _EVAL_MAINS[argv[0]]
    return getattr(importlib.import_module(module), fn)(argv[1:])
  if argv and argv[0] == "plan":
    from xmtf_pipeline.tools import planner
    return planner.main(argv[1:])
  if argv and argv[0] == "bench":
    if len(argv) > 1 and argv[1] == "packing":
      from xmtf_pipeline.tools import bench_packing
      return bench_packing.main_packing(argv[2:])
    if len(argv) > 1 and argv[1] == "data":
      from xmtf_pipeline.tools import bench_data
      return bench_data.main_data(argv[2:])
    if len(argv) > 1 and argv[1] == "embed":
      from xmtf_pipeline.tools import bench_embed
      return bench_embed.main(argv[2:])
    from xmtf_pipeline.tools import bench
    return bench.main(argv[1:])
  args = build_parser().parse_args(argv)
  from xmtf_pipeline.gin_config import GinConfigError
  from xmtf_pipeline.params import ParamMismatchError
  try:
    return args.func(args)
  except (GinConfigError, ParamMismatchError) as e:
    print(f"xmtf {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
