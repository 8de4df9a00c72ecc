#!/usr/bin/env python
"""Rank-classification scoring throughput (examples/s) on whatever JAX device is present.

Why: the held-out suite is ~250 (dataset, config, prompt) runs over up to 5k rows each, so
scoring speed decides whether a full `xmtf eval` takes minutes or hours. This scores the
bundled real rows (COPA, CB, RTE, Winogrande, all five prompts each) with a random-weight
model of a chosen size, after one untimed warm-up pass (compilation), and prints examples
(prompts, each with all its choices) per second; ``--brute_force`` also times the per-pair
reference (one whole-model pass per (prompt, choice)) to show the one-encoder-pass gain.

Tokenization uses the bundled tiny SentencePiece model (400 pieces), which splits text into
~3x more tokens than mT5's 250k vocabulary: prompts here are longer than with mT5's.

  .venv/bin/python scripts/bench_scoring.py [--model mt5_small] [--batch_size 32] [--brute_force]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", default="mt5_tiny", help="gin/models/NAME.gin (vocab >= 500)")
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--max_examples", type=int, default=None, help="rows per dataset")
  p.add_argument("--dtype", default=None, help="override COMPUTE_DTYPE (float32, bfloat16)")
  p.add_argument("--brute_force", action="store_true", help="also time per-pair scoring")
  args = p.parse_args(argv)

  import jax

  from tasks import heldout, vocab
  from xmtf_pipeline import gin_config, models, params
  from xmtf_pipeline import rank_classification as rc

  bindings = [f"COMPUTE_DTYPE = '{args.dtype}'"] if args.dtype else []
  config = gin_config.load_model_config(args.model, bindings)
  spm = vocab.sample_vocabulary()
  examples = []
  for dataset in heldout.BUNDLED:
    spec = heldout.DATASETS[dataset]
    rows = heldout.load_rows(dataset, spec.configs[0], str(heldout.BUNDLED_DIR), args.max_examples)
    for prompt in spec.prompts:
      template = heldout.get_prompt(dataset, prompt)
      for row in rows:
        ex = heldout.render(template, row)
        examples.append(rc.tokenize_example(spm, ex.inputs, ex.choices, ex.label, 2048, 256))
  pairs = sum(len(ex.choices) for ex in examples)
  in_tokens = sum(len(ex.inputs) for ex in examples) / len(examples)
  tree = jax.jit(params.init_params, static_argnums=0)(config, jax.random.PRNGKey(0))
  scorer = rc.RankScorer(models.EncoderDecoderModel(config).module, tree, args.batch_size)
  device = jax.devices()[0]
  print(f"model {args.model} ({params.count(config):,} params, {config.dtype}) on "
        f"{device.platform}:{device.device_kind}; {len(examples)} examples ({pairs} choices, "
        f"mean prompt {in_tokens:.0f} tokens), batch {args.batch_size}", flush=True)
  t0 = time.perf_counter()
  scorer.score(examples)
  warm = time.perf_counter() - t0
  t0 = time.perf_counter()
  scores = scorer.score(examples)
  jax.block_until_ready(scores[-1])
  took = time.perf_counter() - t0
  print(f"grouped (one encoder pass per prompt): {len(examples) / took:.1f} examples/s, "
        f"{pairs / took:.1f} choices/s ({took:.2f}s; first pass incl. compilation {warm:.2f}s)")
  if args.brute_force:  # same subset for both: every k-th example, all four datasets
    sub = examples[::max(1, len(examples) // 200)]
    model = models.EncoderDecoderModel(config)
    rc.score_pairs(model, tree, sub)  # compile every padded shape
    t0 = time.perf_counter()
    rc.score_pairs(model, tree, sub)
    took_bf = time.perf_counter() - t0
    scorer.score(sub)  # compile the subset's shapes
    t0 = time.perf_counter()
    jax.block_until_ready(scorer.score(sub)[-1])
    took_g = time.perf_counter() - t0
    print(f"same {len(sub)} examples: grouped {len(sub) / took_g:.1f} examples/s, brute force "
          f"(whole model per (prompt, choice)) {len(sub) / took_bf:.1f} "
          "examples/s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
