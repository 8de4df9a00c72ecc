"""``xmtf bench embed``: the token-embedding gradient, four ways, on full and mT0 rows.

The lookup's gradient adds each position's cotangent into its token's table row. Real
mT0 batches are mostly padding (id 0), so most adds meet on row 0. Timed here (fwd +
gradient of one lookup, the model's shapes, median of ``--reps``) and checked against
a float64 sum:

* ``bf16 gather`` — the old layer: gather from the bf16-cast table; a bf16 scatter-add
  (rounded at every add; on GPUs a compare-and-swap loop).
* ``f32 gather, cast`` — the layer now: gather from the float32 table, cast the rows;
  a float32 scatter-add (native atomics on GPUs).
* ``sorted segment-sum`` — the same float32 sums after sorting the ids, so equal ids
  are adjacent (``indices_are_sorted``); costs a sort of the batch's ids.
* ``one-hot matmul`` — T5X's formulation: (tokens x vocab) one-hot times the table,
  2·tokens·vocab·d FLOPs each way; timed on ``--onehot-tokens`` tokens and scaled.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _lookups(vocab: int):
  import jax
  import jax.numpy as jnp

  def bf16_gather(table, ids):
    return jnp.take(table.astype(jnp.bfloat16), ids, axis=0)

  def f32_gather(table, ids):
    return jnp.take(table, ids, axis=0).astype(jnp.bfloat16)

  @jax.custom_vjp
  def sorted_segment(table, ids):
    return f32_gather(table, ids)

  def fwd(table, ids):
    return f32_gather(table, ids), (ids, table.shape[0])

  def bwd(res, ct):
    ids, rows = res
    flat = ids.reshape(-1)
    order = jnp.argsort(flat)
    ct = ct.reshape(-1, ct.shape[-1]).astype(jnp.float32)[order]
    return jax.ops.segment_sum(ct, flat[order], rows, indices_are_sorted=True), None

  sorted_segment.defvjp(fwd, bwd)

  def one_hot(table, ids):
    return jnp.dot(jax.nn.one_hot(ids, vocab, dtype=jnp.bfloat16), table.astype(jnp.bfloat16),
                   preferred_element_type=jnp.float32).astype(jnp.bfloat16)

  return {"bf16 gather (old)": bf16_gather, "f32 gather, cast (chosen)": f32_gather,
          "sorted segment-sum": sorted_segment, "one-hot matmul": one_hot}


def _time(fn, args, reps: int) -> float:
  import jax
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def run(model: str, batch: int, len_in: int, len_out: int, reps: int, onehot_tokens: int
        ) -> list[dict]:
  import jax
  import jax.numpy as jnp

  from xmtf_pipeline.tools import bench_workload as bench
  cfg = bench.model_config(model)
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.standard_normal((cfg.vocab_size, cfg.emb_dim)), jnp.float32)
  rows = []
  for data in ("full", "mt0"):
    b = bench.DATA[data](batch, len_in, len_out, cfg.vocab_size)
    ids = np.concatenate([b["encoder_input_tokens"], b["decoder_input_tokens"]], 1)
    # Cotangents as the model's: zero where the position is padding.
    real = np.concatenate([b["encoder_input_tokens"] > 0, b["decoder_target_tokens"] > 0], 1)
    ct = jnp.asarray(rng.standard_normal(ids.shape + (cfg.emb_dim,)) * real[..., None],
                     jnp.bfloat16)
    for name, lookup in _lookups(cfg.vocab_size).items():
      n = ids.shape[1] if name != "one-hot matmul" else max(1, onehot_tokens // batch)
      x, c = jnp.asarray(ids[:, :n]), ct[:, :n]

      def grad(t, x, c, lookup=lookup):
        return jax.vjp(lambda u: lookup(u, x), t)[1](c)[0]

      fn = jax.jit(grad)
      seconds = _time(fn, (table, x, c), reps) * ids.shape[1] / n
      g = np.asarray(fn(table, x, c), np.float64)
      ref = np.zeros_like(g)  # the exact sum of the (bf16) cotangents
      np.add.at(ref, ids[:, :n].reshape(-1), np.asarray(c, np.float64).reshape(-1, cfg.emb_dim))
      err = float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
      rows.append({"method": name, "data": data, "ms": seconds * 1e3, "grad_rel_err": err,
                   "timed_tokens": int(n * batch), "tokens": int(ids.size),
                   "padding_share": float(1 - real.mean()),
                   "row0_updates": int((ids == 0).sum())})
  return rows


def table(rows: list[dict]) -> str:
  lines = [f"{'method':<28}{'data':>5}{'ms':>10}{'rel err':>10}{'tokens':>8}{'row-0 adds':>11}"]
  for r in rows:
    scaled = "*" if r["timed_tokens"] != r["tokens"] else " "
    lines.append(f"{r['method']:<28}{r['data']:>5}{r['ms']:>9.1f}{scaled}{r['grad_rel_err']:>10.1e}"
                 f"{r['tokens']:>8}{r['row0_updates']:>11}")
  lines.append("* timed on fewer tokens and scaled linearly (its cost is linear in tokens)")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="xmtf bench embed", description=__doc__.split("\n")[0])
  p.add_argument("--model", default="mt5_small")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs", type=int, default=1024)
  p.add_argument("--targets", type=int, default=256)
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--onehot-tokens", dest="onehot_tokens", type=int, default=256)
  p.add_argument("--json", help="write the rows here")
  args = p.parse_args(argv)
  rows = run(args.model, args.batch, args.inputs, args.targets, args.reps, args.onehot_tokens)
  print(table(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "rows": rows}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
