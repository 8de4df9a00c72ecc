"""The demo that `.ci/run` ran just before the suite, as the README orders, when there is one.

`.ci/run` passes its transcript (XMTF_DEMO_TRANSCRIPT) and flags (XMTF_DEMO_ARGS). Tests that
need a finished demo read that run instead of training another; run without `.ci/run`, they
train their own.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class DemoRun:
  transcript: str  # everything scripts/demo.sh printed
  model_dir: Path
  steps: int
  eval_examples: int | None


def ci_demo_run() -> DemoRun | None:
  path = os.environ.get("XMTF_DEMO_TRANSCRIPT")
  if not path:
    return None
  from xmtf_pipeline import cli
  from xmtf_pipeline.tools import demo
  args = cli.build_parser().parse_args(["demo", *os.environ.get("XMTF_DEMO_ARGS", "").split()])
  return DemoRun(Path(path).read_text(), Path(args.model_dir or demo.default_model_dir()),
                 args.steps, args.eval_examples)
