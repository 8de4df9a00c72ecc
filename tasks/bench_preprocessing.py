"""CPU throughput of the data pipeline on the bundled sample: read + tokenize (+ pack).

    .venv/bin/python -m tasks.bench_preprocessing [--examples 20000] [--lengths inputs=128,...]

Measures preprocessed examples per second out of the ``xp3_sample`` mixture (JSON parsing,
SentencePiece tokenization, EOS after trim, shuffle, mixing) and then through seqio's
EncDecFeatureConverter with packing off and on, batched as the trainer would. The sample repeats
(num_epochs=None), so any number of examples can be timed; the first batches are a warm-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _lengths(text: str) -> dict[str, int]:
  return {k: int(v) for k, v in (p.split("=") for p in text.split(","))}


def measure(name: str, lengths: dict[str, int], examples: int, batch: int, pack: bool | None,
            seed: int = 0) -> tuple[float, int]:
  """(examples per second, examples timed) for one configuration; pack None = no converter."""
  import numpy as np
  import seqio

  provider = seqio.get_mixture_or_task(name)
  ds = provider.get_dataset(sequence_length=lengths, split="train", shuffle=True, seed=seed,
                            num_epochs=None)
  if pack is not None:
    ds = seqio.EncDecFeatureConverter(pack=pack)(ds, lengths)
  ds = (ds.padded_batch(batch) if pack is None else ds.batch(batch)).prefetch(2)
  it = ds.as_numpy_iterator()
  for _ in range(3):  # warm-up: graph tracing, shuffle buffers filling
    next(it)
  done, start = 0, time.perf_counter()
  while done < examples:
    b = next(it)
    if pack:  # examples in a packed row = its number of segments
      done += int(np.max(b["encoder_segment_ids"], axis=1).sum())
    else:
      done += len(next(iter(b.values())))
  return done / (time.perf_counter() - start), done


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--name", default="xp3_sample", help="task or mixture")
  ap.add_argument("--examples", type=int, default=20_000, help="examples to time per setting")
  ap.add_argument("--lengths", default="inputs=128,targets=32", help="TASK_FEATURE_LENGTHS")
  ap.add_argument("--batch", type=int, default=32, help="batch size (rows)")
  args = ap.parse_args(argv)
  import tensorflow as tf

  import tasks.xp3  # noqa: F401  (registers the sample)

  lengths = _lengths(args.lengths)
  print(f"{args.name}, lengths {lengths}, batch {args.batch}, CPU threads "
        f"{os.cpu_count()}, TF {tf.__version__}")
  for label, pack in (("tokenize", None), ("tokenize + convert (unpacked)", False),
                      ("tokenize + pack", True)):
    rate, n = measure(args.name, lengths, args.examples, args.batch, pack)
    print(f"{label:<32} {rate:>10,.0f} examples/s  ({n:,} examples)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
