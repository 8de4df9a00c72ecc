"""The ``xmtf`` command: one subcommand per job, each importing only what it needs."""

from __future__ import annotations

import argparse
import os
import sys

# TensorFlow (under seqio) is chatty on import; keep it to errors unless asked.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _demo(args: argparse.Namespace) -> int:
  from xmtf_pipeline import demo
  return demo.main(model=args.model, model_dir=args.model_dir, steps=args.steps,
                   batch_size=args.batch_size)


def _params(args: argparse.Namespace) -> int:
  from xmtf_pipeline import gin_config, params
  config = gin_config.load_model_config(args.model, args.gin_bindings)
  print(params.param_table(config))
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="xmtf", description="Reproduce mT0: T5X-style training and SeqIO tasks on JAX.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

  p = sub.add_parser("demo", help="the main job on the embedded default (tiny mT5, CPU)")
  p.add_argument("--model", default="mt5_tiny", help="model name (gin/models/NAME.gin) or gin file")
  p.add_argument("--model_dir", default="runs/demo", help="where checkpoints and logs go")
  p.add_argument("--steps", type=int, default=400, help="training steps")
  p.add_argument("--batch_size", type=int, default=32)
  p.set_defaults(func=_demo)

  # Commands with their own T5X-style flag parsers: listed here, dispatched in main().
  for name, help_text in _OWN_FLAGS.items():
    sub.add_parser(name, help=help_text, add_help=False)

  p = sub.add_parser("params", help="print a model's parameter table (no allocation)")
  p.add_argument("--model", default="mt5_tiny", help="model name (gin/models/NAME.gin) or gin file")
  p.add_argument("--gin_bindings", action="append", default=[], help="extra gin bindings")
  p.set_defaults(func=_params)
  __import__("xmtf_pipeline.data_inspect", fromlist=["add_parser"]).add_parser(sub)
  return parser


_OWN_FLAGS = {
    "train": "train/finetune with gin configs (T5X flags: xmtf train --help)",
}


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "train":
    from xmtf_pipeline import train
    return train.main(argv[1:])
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
