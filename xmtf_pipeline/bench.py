"""``xmtf bench train``: training throughput of our real step, and HF transformers beside it.

Runs jitted train steps (T5X Adafactor, z-loss, AVERAGE_PER_SEQUENCE, dropout)
on synthetic full-length batches and prints examples/s, tokens/s, model TFLOP/s
from an analytic FLOP count, MFU against a bf16 matmul ceiling measured in the
same run, peak device memory and compile time, as a table and as JSON. Every
measurement runs in its own process (own memory pool, own XLA_FLAGS).

``--ladder`` times the speed options one after another (``LADDER``; bench/NOTES.md),
``--check`` first compares each option's loss and gradients with the plain path on
the device (``bench_checks``), ``--vs-hf`` adds HF transformers' torch MT5.

FLOPs (documented, per example, forward; training = 3x): every matmul as
2*m*n*k — attention projections, attention scores and values, the gated MLP,
cross-attention, and the LM head — i.e. what mt5-large at 1024/256 needs:
3.553 TFLOP per example per step. Rematerialised recomputation is not counted
(MFU counts model FLOPs only). Imports neither TensorFlow, seqio nor gin.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

SIZES = {  # emb, heads, layers, mlp (gin/models/mt5_*.gin; duplicated to avoid gin here)
    "mt5_small": (512, 6, 8, 1024), "mt5_base": (768, 12, 12, 2048),
    "mt5_large": (1024, 16, 24, 2816), "mt5_xl": (2048, 32, 24, 5120),
    "mt5_xxl": (4096, 64, 24, 10240), "mt5_tiny": (64, 4, 2, 128),
}


def model_config(name: str, dtype: str = "bfloat16", dropout: float = 0.1, **overrides):
  from xmtf_pipeline.network import T5Config
  d, h, n, f = SIZES[name]
  vocab = 512 if name == "mt5_tiny" else 250112
  head_dim = 16 if name == "mt5_tiny" else 64
  return T5Config(vocab_size=vocab, emb_dim=d, num_heads=h, num_encoder_layers=n,
                  num_decoder_layers=n, head_dim=head_dim, mlp_dim=f, dropout_rate=dropout,
                  dtype=dtype, **overrides)


def train_flops_per_example(cfg, len_in: int, len_out: int) -> float:
  d, i, f, V = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  enc = 8 * len_in * d * i + 4 * len_in * len_in * i + 6 * len_in * d * f
  dec = (8 * len_out * d * i + 4 * len_out * len_out * i          # self-attention
         + 4 * len_out * d * i + 4 * len_in * d * i               # cross q,o and k,v
         + 4 * len_out * len_in * i + 6 * len_out * d * f)        # cross scores, MLP
  head = 2 * len_out * d * V
  return 3.0 * (cfg.num_encoder_layers * enc + cfg.num_decoder_layers * dec + head)


def matmul_ceiling_tflops(n: int | None = None, reps: int = 10) -> float:
  """bf16 n x n matmuls per second; n = 8192 on accelerators, 1024 on a CPU (seconds, not
  minutes: a CPU figure only makes the table complete)."""
  import jax
  import jax.numpy as jnp
  n = n or (1024 if jax.default_backend() == "cpu" else 8192)
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda x, y: x @ y)
  for _ in range(3):
    f(a, b).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    out = f(a, b)
  out.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def synthetic_batch(batch: int, len_in: int, len_out: int, vocab: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab, (batch, len_in)).astype(np.int32)
  tgt = rng.integers(2, vocab, (batch, len_out)).astype(np.int32)
  enc[:, -1] = tgt[:, -1] = 1
  dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], 1)
  return {"encoder_input_tokens": enc, "decoder_target_tokens": tgt, "decoder_input_tokens": dec,
          "decoder_loss_weights": np.ones_like(tgt, np.float32)}


def bench_ours(cfg, batch: int, len_in: int, len_out: int, steps: int, loss_chunk: int = 0
               ) -> dict:
  import jax

  from xmtf_pipeline import models, schedules, trainer
  from xmtf_pipeline.adafactor import Adafactor
  from xmtf_pipeline.partitioning import Partitioner
  model = models.EncoderDecoderModel(cfg, z_loss=1e-4,
                                     loss_normalizing_factor="AVERAGE_PER_SEQUENCE",
                                     loss_chunk_length=loss_chunk)
  opt = Adafactor()
  lr = schedules.create_learning_rate_scheduler("constant", base_learning_rate=1e-3)
  part = Partitioner()
  mesh = part.mesh(jax.devices()[:1])
  state, shardings = trainer.init_state(model, opt, part, mesh, jax.random.PRNGKey(0))
  step = trainer.jit_train_step(model, opt, lr, 1, part, mesh, shardings)
  b = part.shard_batch(mesh, synthetic_batch(batch, len_in, len_out, cfg.vocab_size))
  rng = jax.random.PRNGKey(1)
  t = time.perf_counter()
  state, stats = step(state, b, rng)
  jax.block_until_ready(stats["loss"])
  compile_s = time.perf_counter() - t
  for _ in range(2):
    state, stats = step(state, b, rng)
  jax.block_until_ready(stats["loss"])
  t = time.perf_counter()
  for _ in range(steps):
    state, stats = step(state, b, rng)
  jax.block_until_ready(state.params)
  elapsed = time.perf_counter() - t
  mem = jax.devices()[0].memory_stats() or {}
  return {"engine": "xmtf (JAX)", "batch": batch, "step_s": elapsed / steps,
          "compile_s": compile_s, "loss": float(stats["loss"]),
          "peak_bytes": int(mem.get("peak_bytes_in_use", 0))}


def bench_hf(name: str, batch: int, len_in: int, len_out: int, steps: int, compile_model: bool
             ) -> dict:
  """HF transformers' torch MT5 with an untied head, bf16 autocast, fused AdamW."""
  import torch
  from transformers import MT5Config, MT5ForConditionalGeneration
  d, h, n, f = SIZES[name]
  cfg = MT5Config(vocab_size=250112, d_model=d, d_kv=64, d_ff=f, num_layers=n,
                  num_decoder_layers=n, num_heads=h, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, dropout_rate=0.1)
  model = MT5ForConditionalGeneration(cfg).cuda()
  if model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr():
    # transformers 5.x ties MT5's head whatever the config says: untie it explicitly.
    model.lm_head = torch.nn.Linear(d, 250112, bias=False).cuda()
  n_params = sum(p.numel() for p in model.parameters())
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
  fwd = torch.compile(model) if compile_model else model
  b = synthetic_batch(batch, len_in, len_out, 250112)
  inp = torch.tensor(b["encoder_input_tokens"], dtype=torch.long, device="cuda")
  labels = torch.tensor(b["decoder_target_tokens"], dtype=torch.long, device="cuda")

  def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
      loss = fwd(input_ids=inp, labels=labels).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  torch.cuda.synchronize()
  t = time.perf_counter()
  step()
  torch.cuda.synchronize()
  compile_s = time.perf_counter() - t
  for _ in range(2):
    step()
  torch.cuda.synchronize()
  t = time.perf_counter()
  for _ in range(steps):
    loss = step()
  torch.cuda.synchronize()
  elapsed = time.perf_counter() - t
  return {"engine": f"HF torch{' compile' if compile_model else ' eager'}", "batch": batch,
          "step_s": elapsed / steps, "compile_s": compile_s, "loss": float(loss),
          "peak_bytes": int(torch.cuda.max_memory_allocated()), "params": n_params}


def _finish(r: dict, flops: float, ceiling: float, len_in: int, len_out: int) -> dict:
  ex_s = r["batch"] / r["step_s"]
  r.update(examples_per_s=ex_s, tokens_per_s=ex_s * (len_in + len_out),
           model_tflops=ex_s * flops / 1e12, mfu=ex_s * flops / 1e12 / ceiling)
  return r


def table(rows: list[dict]) -> str:
  head = (f"{'engine':<34}{'batch':>6}{'ex/s':>9}{'tok/s':>10}{'TFLOP/s':>9}{'MFU':>7}"
          f"{'peak GiB':>10}{'compile s':>10}")
  lines = [head]
  for r in rows:
    lines.append(f"{r['engine'][:33]:<34}{r['batch']:>6}{r['examples_per_s']:>9.1f}"
                 f"{r['tokens_per_s']:>10.0f}{r['model_tflops']:>9.1f}{r['mfu']:>7.1%}"
                 f"{r['peak_bytes'] / 2**30:>10.1f}{r['compile_s']:>10.1f}")
  return "\n".join(lines)


# The lever ladder (bench/NOTES.md): each row adds one option to the row before.
# "dropout": None keeps --dropout; fused attention engages only without attention dropout.
LADDER = (
    ("T5X defaults", {}),
    ("+ scan, remat full", {"scan_layers": True, "remat_policy": "full"}),
    ("+ remat dots_no_batch", {"remat_policy": "dots_no_batch"}),
    ("+ chunked CE (64)", {"loss_chunk": 64}),
    ("+ bf16 LM head", {"head_dtype": "bfloat16"}),
    ("+ dropout 0 (for fused attention)", {"dropout": 0.0}),
    ("+ cuDNN attention", {"attention_impl": "cudnn"}),
    ("+ XLA: cuBLAS not Triton GEMMs", {"xla_flags": "--xla_gpu_enable_triton_gemm=false"}),
)
CONFIG_OPTIONS = ("scan_layers", "remat_policy", "head_dtype", "attention_impl")


def ladder_specs(base: dict) -> list[dict]:
  specs, cur = [], dict(base)
  for name, change in LADDER:
    cur = dict(cur, **change)
    specs.append(dict(cur, name=name))
  return specs


def run_child(spec: dict, args, timeout: float) -> dict | None:
  """One measurement in a fresh process: its own GPU memory pool (so peak memory is the
  row's own), its own XLA_FLAGS, and a hung or out-of-memory row cannot stop the rest."""
  env = dict(os.environ)
  if spec.get("xla_flags"):
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + spec["xla_flags"]).strip()
  cmd = [sys.executable, "-m", "xmtf_pipeline.bench", "train", "--model", args.model,
         "--inputs", str(args.inputs), "--targets", str(args.targets), "--steps", str(args.steps),
         "--_child", json.dumps(spec)]
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
  except subprocess.TimeoutExpired:
    print(f"{spec.get('name', spec['kind'])}: no result within {timeout:.0f} s", file=sys.stderr)
    return None
  line = [x for x in out.stdout.splitlines() if x.startswith("CHILDJSON:")]
  if not line:
    print(f"{spec.get('name', spec['kind'])} failed:\n{out.stderr[-1500:]}", file=sys.stderr)
    return None
  return json.loads(line[0][len("CHILDJSON:"):])


def child(spec: dict, args) -> dict:
  kind = spec["kind"]
  if kind == "ceiling":
    return {"ceiling_tflops": matmul_ceiling_tflops()}
  if kind == "check":
    from xmtf_pipeline import bench_checks
    return {"checks": bench_checks.run_checks(spec["model"], spec.get("batch", 2), args.inputs,
                                              args.targets, tuple(spec["dtypes"]))}
  if kind == "hf":
    return bench_hf(args.model, spec["batch"], args.inputs, args.targets, args.steps,
                    spec["compile"])
  options = {k: spec[k] for k in CONFIG_OPTIONS if k in spec}
  cfg = model_config(args.model, dropout=spec.get("dropout", 0.1), **options)
  r = bench_ours(cfg, spec["batch"], args.inputs, args.targets, args.steps,
                 spec.get("loss_chunk", 0))
  r["engine"] = "xmtf: " + spec.get("name", "")
  r["options"] = {k: v for k, v in spec.items() if k not in ("kind", "name", "batch")}
  return r


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="xmtf bench train", description=__doc__.split("\n")[0])
  p.add_argument("what", nargs="?", default="train", choices=["train"])
  p.add_argument("--model", default="mt5_large", choices=sorted(SIZES))
  p.add_argument("--batch", type=int, action="append", help="batch size (repeatable)")
  p.add_argument("--inputs", type=int, default=1024)
  p.add_argument("--targets", type=int, default=256)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--dropout", type=float, default=0.1)
  p.add_argument("--scan", action="store_true", help="T5Config.scan_layers")
  p.add_argument("--remat", default="none", help="T5Config.remat_policy")
  p.add_argument("--loss-chunk", dest="loss_chunk", type=int, default=0,
                 help="EncoderDecoderModel.loss_chunk_length (0: full logits)")
  p.add_argument("--head-dtype", dest="head_dtype", default="float32")
  p.add_argument("--attention", default="einsum", help="T5Config.attention_impl")
  p.add_argument("--xla-flags", dest="xla_flags", default="", help="extra XLA_FLAGS for ours")
  p.add_argument("--ladder", action="store_true",
                 help="time each lever of LADDER in turn (at the first --batch)")
  p.add_argument("--ladder-rows", dest="ladder_rows", default=None,
                 help="comma-separated LADDER indices to run, in this order (default: all)")
  p.add_argument("--best-batch", dest="best_batch", type=int, action="append", default=[],
                 help="with --ladder: also time the full ladder (last row) at this batch")
  p.add_argument("--check", action="store_true",
                 help="first compare each lever's loss and gradients with the plain path")
  p.add_argument("--check-model", dest="check_model", default="mt5_small",
                 help="model size for --check (8+8 layers compile quickly)")
  p.add_argument("--check-dtypes", dest="check_dtypes", default="float32,bfloat16",
                 help="compute dtypes --check compares in")
  p.add_argument("--vs-hf", dest="vs_hf", action="store_true",
                 help="also time HF transformers' torch MT5 (eager and torch.compile)")
  p.add_argument("--hf-batch", type=int, action="append", help="HF torch.compile batch sizes")
  p.add_argument("--hf-eager-batch", type=int, action="append", help="HF eager batch sizes")
  p.add_argument("--timeout", type=float, default=420, help="seconds per measurement")
  p.add_argument("--json", help="write the results here as JSON")
  p.add_argument("--_child", help=argparse.SUPPRESS)
  return p


def row_specs(args) -> list[dict]:
  """Our rows: the options as given at each --batch, or the (selected) lever ladder."""
  base = {"kind": "xmtf", "dropout": args.dropout, "scan_layers": args.scan,
          "remat_policy": args.remat, "loss_chunk": args.loss_chunk,
          "head_dtype": args.head_dtype, "attention_impl": args.attention,
          "xla_flags": args.xla_flags}
  batches = args.batch or [32]
  if not args.ladder:
    return [dict(base, batch=b, name="options as given") for b in batches]
  ladder = [dict(s, batch=batches[0]) for s in ladder_specs(base)]
  order = (range(len(ladder)) if args.ladder_rows is None
           else [int(i) for i in args.ladder_rows.split(",")])
  return [ladder[i] for i in order] + [dict(ladder[-1], batch=b) for b in args.best_batch]


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if args._child:
    print("CHILDJSON:" + json.dumps(child(json.loads(args._child), args)), flush=True)
    return 0
  flops = train_flops_per_example(model_config(args.model), args.inputs, args.targets)
  result = {"model": args.model, "inputs": args.inputs, "targets": args.targets,
            "flops_per_example": flops, "rows": []}

  def save():
    if args.json:
      with open(args.json, "w") as f:
        json.dump(result, f, indent=2)

  got = run_child({"kind": "ceiling"}, args, args.timeout)
  if got is None:
    return 1
  ceiling = result["ceiling_tflops"] = got["ceiling_tflops"]
  print(f"bf16 matmul ceiling: {ceiling:.1f} TFLOP/s", flush=True)
  if args.check:
    got = run_child({"kind": "check", "model": args.check_model,
                     "dtypes": args.check_dtypes.split(",")}, args, args.timeout)
    result["checks"] = got["checks"] if got else None
    if got:
      from xmtf_pipeline.bench_checks import checks_table
      print(checks_table(got["checks"]), flush=True)
    save()
  specs = row_specs(args)
  if args.vs_hf:
    specs += [{"kind": "hf", "batch": b, "compile": False} for b in args.hf_eager_batch or [8]]
    specs += [{"kind": "hf", "batch": b, "compile": True} for b in args.hf_batch or [16]]
  for spec in specs:
    r = run_child(spec, args, args.timeout)
    if r is not None:
      result["rows"].append(_finish(r, flops, ceiling, args.inputs, args.targets))
      print(table(result["rows"][-1:]), flush=True)
      save()
  _summarise(result, args)
  save()
  return 0


def _summarise(result: dict, args) -> None:
  rows = result["rows"]
  print(f"{args.model} {args.inputs}/{args.targets}: {result['flops_per_example'] / 1e12:.3f} "
        f"TFLOP per example (fwd+bwd); bf16 matmul ceiling measured "
        f"{result['ceiling_tflops']:.1f} TFLOP/s")
  print(table(rows))
  ours = [r for r in rows if r["engine"].startswith("xmtf")]
  hf = [r for r in rows if "compile" in r["engine"]]
  if ours and hf:
    best = max(ours, key=lambda r: r["examples_per_s"])
    ref = max(hf, key=lambda r: r["examples_per_s"])
    result["ratio_vs_hf_compile"] = best["examples_per_s"] / ref["examples_per_s"]
    print(f"xmtf / HF torch.compile: {result['ratio_vs_hf_compile']:.2f}x")
  print("JSON:" + json.dumps(result))


if __name__ == "__main__":
  sys.exit(main())
