"""T5X's command-line flags, shared by ``xmtf train``, ``eval`` and ``infer``.

``--gin_file``/``--gin_bindings``/``--gin_search_paths`` (plus the ``--gin.NAME=VALUE``
shorthand, rewritten by gin_config) and T5X's data and multi-process flags, under T5X's names.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any


def build_arg_parser(prog: str, description: str) -> argparse.ArgumentParser:
  """The flags of ``xmtf train``/``eval``/``infer`` (T5X's names); ``description`` heads --help."""
  p = argparse.ArgumentParser(prog=prog, description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--gin_file", action="append", default=[],
                 help="gin file (repeatable; later files override earlier)")
  p.add_argument("--gin_bindings", action="append", default=[],
                 help="gin binding applied after the files (repeatable); --gin.NAME=VALUE works too")
  p.add_argument("--gin_search_paths", action="append", default=[],
                 help="comma-separated folders to resolve gin files and includes")
  p.add_argument("--tfds_data_dir", default=None, help="TFDS data dir override")
  p.add_argument("--seqio_additional_cache_dirs", action="append", default=[],
                 help="extra folders with cached SeqIO tasks")
  p.add_argument("--multiprocess_gpu", action="store_true",
                 help="initialize jax.distributed for multi-process GPU/CPU runs")
  p.add_argument("--coordinator_address", default=None, help="host:port of process 0")
  p.add_argument("--process_count", type=int, default=None)
  p.add_argument("--process_index", type=int, default=None)
  p.add_argument("--distributed_timeout_s", type=int, default=300,
                 help="seconds to wait for the coordinator before failing")
  return p


def configure_data(args: argparse.Namespace) -> None:
  """Applies --tfds_data_dir and --seqio_additional_cache_dirs."""
  if not (args.tfds_data_dir or args.seqio_additional_cache_dirs):
    return
  import seqio
  if args.tfds_data_dir:
    seqio.set_tfds_data_dir_override(args.tfds_data_dir)
  if args.seqio_additional_cache_dirs:
    seqio.add_global_cache_dirs(args.seqio_additional_cache_dirs)


def search_paths(args: argparse.Namespace) -> list[str]:
  """--gin_search_paths, each comma-separated, flattened."""
  return [p for arg in args.gin_search_paths for p in arg.split(",") if p]


class FlagError(ValueError):
  """Flags that contradict each other; the message names both."""


@dataclasses.dataclass(frozen=True)
class PlainFlag:
  """A plain flag that is sugar for one gin binding (``--checkpoint X`` = ``CHECKPOINT_PATH = 'X'``).

  gin stays the source of truth: the flag only appends its binding after the T5X flags'.
  """
  flag: str  # e.g. "--checkpoint"
  binding: str  # a macro (CHECKPOINT_PATH) or configurable.parameter
  help: str
  type: type = str  # str values are quoted for gin; int values are written as they are

  @property
  def dest(self) -> str:
    return self.flag.lstrip("-").replace("-", "_")

  def gin_binding(self, value: Any) -> str:
    return f"{self.binding} = {value!r}" if self.type is str else f"{self.binding} = {value}"


def add_plain_flags(p: argparse.ArgumentParser, plain: Sequence[PlainFlag]):
  """Adds ``plain`` as a group of the parser (returned); each flag's help names its gin form."""
  group = p.add_argument_group(
      "plain flags (each is the same as the --gin.NAME=VALUE shown; give one or the other)")
  for f in plain:
    group.add_argument(f.flag, dest=f.dest, type=f.type, default=None,
                       metavar=f.dest.upper() if f.type is str else "N",
                       help=f"{f.help} (= --gin.{f.binding}=...)")
  return group


def _binding_name(binding: str) -> str:
  return binding.split("=", 1)[0].strip()


def plain_bindings(args: argparse.Namespace, plain: Sequence[PlainFlag]) -> list[str]:
  """The gin bindings of the plain flags given; a flag and a --gin binding of the same name fail."""
  given = {_binding_name(b) for b in args.gin_bindings}
  out = []
  for f in plain:
    value = getattr(args, f.dest, None)
    if value is None:
      continue
    if f.binding in given:
      raise FlagError(f"{f.flag} and --gin.{f.binding} both set {f.binding}; give only one.")
    out.append(f.gin_binding(value))
  return out
