"""`python -m xmtf_pipeline.train` for several runs in one process, one after another.

Usage: train_runs.py FLAGS... [--next FLAGS...]... Each run's flags are `xmtf train`'s. The first
run's may start jax.distributed (--multiprocess_gpu ...); the later runs then restart in the same
processes, as a job restarted on the same hosts would, without paying each process's imports and
jax.distributed start-up again.
"""

import sys

from xmtf_pipeline import tensorflow_import

tensorflow_import.import_quietly()

from xmtf_pipeline import train  # noqa: E402


def main(argv: list[str]) -> int:
  runs = [[]]
  for arg in argv:
    if arg == "--next":
      runs.append([])
    else:
      runs[-1].append(arg)
  for flags in runs:
    rc = train.main(flags, prog="train_runs.py")
    if rc:
      return rc
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
