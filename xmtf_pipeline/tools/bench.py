"""``xmtf bench train``: training throughput of our real step, and HF transformers beside it.

Runs jitted train steps (T5X Adafactor, z-loss, AVERAGE_PER_SEQUENCE, dropout)
on synthetic full-length batches and prints examples/s, tokens/s, model TFLOP/s
from an analytic FLOP count, MFU against a bf16 matmul ceiling measured in the
same run, peak device memory and compile time, as a table and as JSON. Every
measurement runs in its own process (own memory pool, own XLA_FLAGS).

``--ladder`` times the speed options one after another (``LADDER``; bench/NOTES.md),
``--check`` first compares each option's loss and gradients with the plain path on
the device (``bench_checks``), ``--vs-hf`` adds HF transformers' torch MT5,
``--data mt0`` feeds rows shaped like mT0's (unpacked, mostly padding) instead of full
ones, ``--profile DIR`` ranks one traced step's XLA ops (``bench_profile``). A row that
fails (out of memory, timeout) is a row marked failed with its reason; the exit code
is 1 when every row failed. Without --model/--inputs/--targets/--batch, a CPU gets
CPU-sized defaults (``CPU_DEFAULTS``), an accelerator the issue's mt5-large setting.

FLOPs (documented, per example, forward; training = 3x): every matmul as
2*m*n*k — attention projections, attention scores and values, the gated MLP,
cross-attention, and the LM head — i.e. what mt5-large at 1024/256 needs:
3.553 TFLOP per example per step. Rematerialised recomputation is not counted
(MFU counts model FLOPs only). Imports neither TensorFlow, seqio nor gin.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

from xmtf_pipeline.tools.bench_workload import (  # noqa: F401  (the workload's names, re-exported)
  DATA,
  SIZES,
  matmul_ceiling_tflops,
  model_config,
  mt0_like_batch,
  synthetic_batch,
  train_flops_per_example,
)


def bench_ours(cfg, batch: int, len_in: int, len_out: int, steps: int, loss_chunk: int = 0,
               data: str = "full", profile_dir: str | None = None) -> dict:
  import flax.linen as nn
  import jax

  from xmtf_pipeline import models, schedules, trainer
  from xmtf_pipeline.adafactor import Adafactor
  from xmtf_pipeline.partitioning import Partitioner
  model = models.EncoderDecoderModel(cfg, z_loss=1e-4,
                                     loss_normalizing_factor="AVERAGE_PER_SEQUENCE",
                                     loss_chunk_length=loss_chunk)
  opt = Adafactor()
  lr = schedules.create_learning_rate_scheduler("constant", base_learning_rate=1e-3)
  part = Partitioner().with_devices(jax.devices()[:1])
  state, _ = trainer.init_state(model, opt, part, jax.random.PRNGKey(0))
  host_batch = DATA[data](batch, len_in, len_out, cfg.vocab_size)
  b = part.shard_batch(host_batch)
  rng = jax.random.PRNGKey(1)
  # jit_train_step's program on one device, compiled explicitly so the profile can
  # name ops by the compiled HLO.
  fn = jax.jit(functools.partial(trainer.train_step, model, trainer.optimizer_for(model, opt),
                                 lr, 1), donate_argnums=(0,))
  t = time.perf_counter()
  with part.mesh, nn.logical_axis_rules(part.rules):
    compiled = fn.lower(state, b, rng).compile()
  compile_s = time.perf_counter() - t
  for _ in range(2):
    state, stats = compiled(state, b, rng)
  jax.block_until_ready(stats["loss"])
  out = {"engine": "xmtf (JAX)", "batch": batch, "data": data, "compile_s": compile_s,
         "real_tokens_per_row": float(sum((host_batch[k] > 0).sum() for k in
                                          ("encoder_input_tokens", "decoder_target_tokens"))
                                      / batch)}
  if profile_dir:
    from xmtf_pipeline.tools import bench_profile

    def one_step():
      nonlocal state
      state, s = compiled(state, b, rng)
      jax.block_until_ready(s["loss"])
    out["profile"] = bench_profile.profile_step(one_step, profile_dir, compiled.as_text())
  t = time.perf_counter()
  for _ in range(steps):
    state, stats = compiled(state, b, rng)
  jax.block_until_ready(state.params)
  elapsed = time.perf_counter() - t
  return dict(out, step_s=elapsed / steps, loss=float(stats["loss"]),
              peak_bytes=peak_device_bytes(jax.devices()[0]))


def peak_device_bytes(device) -> int | None:
  """Peak bytes in use on ``device``; None where the backend keeps no count (XLA:CPU has no
  memory_stats), so that a table never shows an unmeasured peak as 0.0 GiB."""
  try:
    stats = device.memory_stats() or {}
  except Exception:  # some backends raise instead of returning None
    return None
  peak = int(stats.get("peak_bytes_in_use", 0) or 0)
  return peak or None


def bench_hf(name: str, batch: int, len_in: int, len_out: int, steps: int, compile_model: bool,
             data: str = "full") -> dict:
  """HF transformers' torch MT5 with an untied head, bf16 autocast, fused AdamW."""
  import torch
  from transformers import MT5Config, MT5ForConditionalGeneration
  d, h, n, f = SIZES[name]
  ours = model_config(name)
  cfg = MT5Config(vocab_size=ours.vocab_size, d_model=d, d_kv=ours.head_dim, d_ff=f, num_layers=n,
                  num_decoder_layers=n, num_heads=h, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, dropout_rate=0.1)
  dev = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the issue's >= 1x HF eager
  model = MT5ForConditionalGeneration(cfg).to(dev)
  if model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr():
    # transformers 5.x ties MT5's head whatever the config says: untie it explicitly.
    model.lm_head = torch.nn.Linear(d, cfg.vocab_size, bias=False).to(dev)
  n_params = sum(p.numel() for p in model.parameters())
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
  fwd = torch.compile(model) if compile_model else model
  b = DATA[data](batch, len_in, len_out, cfg.vocab_size)
  inp = torch.tensor(b["encoder_input_tokens"], dtype=torch.long, device=dev)
  mask = inp > 0
  labels = torch.tensor(b["decoder_target_tokens"], dtype=torch.long, device=dev)
  labels = labels.masked_fill(labels == 0, -100)  # HF ignores -100 (padding)

  def sync():
    if dev == "cuda":
      torch.cuda.synchronize()

  def step():
    with torch.autocast(dev, dtype=torch.bfloat16):
      loss = fwd(input_ids=inp, attention_mask=mask, labels=labels).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  sync()
  t = time.perf_counter()
  step()
  sync()
  compile_s = time.perf_counter() - t
  for _ in range(2):
    step()
  sync()
  t = time.perf_counter()
  for _ in range(steps):
    loss = step()
  sync()
  elapsed = time.perf_counter() - t
  peak = torch.cuda.max_memory_allocated() if dev == "cuda" else None  # no CPU count
  return {"engine": f"HF torch{' compile' if compile_model else ' eager'}", "batch": batch,
          "data": data, "step_s": elapsed / steps, "compile_s": compile_s, "loss": float(loss),
          "peak_bytes": int(peak) if peak else None, "params": n_params,
          "real_tokens_per_row": float(((b["encoder_input_tokens"] > 0).sum()
                                        + (b["decoder_target_tokens"] > 0).sum()) / batch)}


def _finish(r: dict, flops: float, ceiling: float, len_in: int, len_out: int) -> dict:
  if "failed" in r:
    return r
  ex_s = r["batch"] / r["step_s"]
  r.update(examples_per_s=ex_s, tokens_per_s=ex_s * (len_in + len_out),
           model_tflops=ex_s * flops / 1e12, mfu=ex_s * flops / 1e12 / ceiling)
  if "real_tokens_per_row" in r:
    r["real_tokens_per_s"] = ex_s * r["real_tokens_per_row"]
  return r


PEAK_NOT_MEASURED = "not measured"


def _peak(r: dict) -> str:
  peak = r.get("peak_bytes")
  return f"{peak / 2**30:.1f}" if peak else PEAK_NOT_MEASURED


def table(rows: list[dict], header: bool = True) -> str:
  """The results table; ``header=False`` gives the row lines only (rows printed as they end)."""
  head = (f"{'engine':<34}{'data':>5}{'batch':>6}{'ex/s':>9}{'tok/s':>10}{'real tok/s':>11}"
          f"{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>13}{'compile s':>10}")
  lines = [head] if header else []
  for r in rows:
    start = f"{r['engine'][:33]:<34}{r.get('data', 'full'):>5}{r['batch']:>6}"
    if "failed" in r:
      lines.append(f"{start}  FAILED: {r['failed']}")
      continue
    lines.append(f"{start}{r['examples_per_s']:>9.1f}{r['tokens_per_s']:>10.0f}"
                 f"{r.get('real_tokens_per_s', float('nan')):>11.0f}"
                 f"{r['model_tflops']:>9.3g}{r['mfu']:>7.1%}"
                 f"{_peak(r):>13}{r['compile_s']:>10.1f}")
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


def _failure(stderr: str, returncode: int) -> str:
  """One line saying why a child died: the error's own line where there is one."""
  if returncode < 0:
    return f"killed by signal {-returncode}" + (" (out of host memory?)" if returncode == -9
                                                 else "")
  lines = [x.strip() for x in stderr.splitlines() if x.strip()]
  for key in ("RESOURCE_EXHAUSTED", "OutOfMemory", "out of memory", "Error", "error"):
    hits = [x for x in lines if key in x]
    if hits:
      return hits[-1][:300]
  return (lines[-1][:300] if lines else f"exit code {returncode}, no output")


def run_child(spec: dict, args, timeout: float) -> dict:
  """One measurement in a fresh process: its own GPU memory pool (so peak memory is the
  row's own), its own XLA_FLAGS, and a hung or out-of-memory row cannot stop the rest.
  A row that fails comes back as ``{"failed": reason}`` with its name and batch."""
  env = dict(os.environ)
  if spec.get("xla_flags"):
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + spec["xla_flags"]).strip()
  cmd = [sys.executable, "-m", "xmtf_pipeline.tools.bench", "train", "--model", args.model,
         "--inputs", str(args.inputs), "--targets", str(args.targets), "--steps", str(args.steps),
         "--_child", json.dumps(spec)]
  name = spec.get("name") or {"hf": "HF torch" + (" compile" if spec.get("compile") else
                                                  " eager")}.get(spec["kind"], spec["kind"])
  failed = {"engine": ("xmtf: " if spec["kind"] == "xmtf" else "") + name,
            "batch": spec.get("batch", 0), "data": spec.get("data", "full")}
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
  except subprocess.TimeoutExpired as e:
    partial = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    print(f"{name}: no result within {timeout:.0f} s", file=sys.stderr)
    return dict(failed, failed=f"timeout after {timeout:.0f} s", stdout=partial[-20000:])
  line = [x for x in out.stdout.splitlines() if x.startswith("CHILDJSON:")]
  if not line:
    reason = _failure(out.stderr, out.returncode)
    print(f"{name} failed: {reason}\n{out.stderr[-1500:]}", file=sys.stderr)
    return dict(failed, failed=reason, stdout=out.stdout[-20000:])
  return json.loads(line[0][len("CHILDJSON:"):])


def child(spec: dict, args) -> dict:
  kind = spec["kind"]
  if kind == "ceiling":
    import jax
    dev = jax.devices()[0]
    return {"ceiling_tflops": matmul_ceiling_tflops() if spec.get("measure", True) else None,
            "backend": jax.default_backend(),
            "device": getattr(dev, "device_kind", str(dev))}
  if kind == "check":
    from xmtf_pipeline.tools import bench_checks

    def stream(row):  # rows checked before a timeout still reach the parent
      print("CHECKROW:" + json.dumps(row), flush=True)
    return {"checks": bench_checks.run_checks(spec["model"], spec.get("batch", 2), args.inputs,
                                              args.targets, tuple(spec["dtypes"]), stream)}
  if kind == "hf":
    return bench_hf(args.model, spec["batch"], args.inputs, args.targets, args.steps,
                    spec["compile"], spec.get("data", "full"))
  options = {k: spec[k] for k in CONFIG_OPTIONS if k in spec}
  cfg = model_config(args.model, dropout=spec.get("dropout", 0.1), **options)
  r = bench_ours(cfg, spec["batch"], args.inputs, args.targets, args.steps,
                 spec.get("loss_chunk", 0), spec.get("data", "full"), spec.get("profile_dir"))
  r["engine"] = "xmtf: " + spec.get("name", "")
  r["options"] = {k: v for k, v in spec.items()
                  if k not in ("kind", "name", "batch", "profile_dir")}
  return r


# Without --model/--inputs/--targets/--batch: the setting on an accelerator; on a
# CPU, one that finishes in a minute or two (mt5-large at batch 32 would run for minutes
# and exhaust host memory).
ACCELERATOR_DEFAULTS = {"model": "mt5_large", "inputs": 1024, "targets": 256, "batch": [32],
                        "steps": 10}
CPU_DEFAULTS = {"model": "mt5_small", "inputs": 128, "targets": 32, "batch": [4], "steps": 3}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="xmtf bench train", description=__doc__.split("\n")[0])
  p.add_argument("what", nargs="?", default="train", choices=["train"])
  p.add_argument("--model", choices=sorted(SIZES),
                 help="default: mt5_large on an accelerator, mt5_small on a CPU")
  p.add_argument("--batch", type=int, action="append", help="batch size (repeatable)")
  p.add_argument("--inputs", type=int, help="default: 1024 (CPU: 128)")
  p.add_argument("--targets", type=int, help="default: 256 (CPU: 32)")
  p.add_argument("--steps", type=int, help="timed steps; default 10 (CPU: 3)")
  p.add_argument("--data", default="full", choices=sorted(DATA),
                 help="full: every position real; mt0: mT0's unpacked rows, mostly padding "
                      "(MT0_MEAN_FRACTION)")
  p.add_argument("--name", default="options as given", help="the row's label (no --ladder)")
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
  p.add_argument("--only-check", dest="only_check", action="store_true",
                 help="--check and nothing else")
  p.add_argument("--check-model", dest="check_model", default="mt5_small",
                 help="model size for --check (8+8 layers compile quickly)")
  p.add_argument("--check-dtypes", dest="check_dtypes", default="float32,bfloat16",
                 help="compute dtypes --check compares in")
  p.add_argument("--vs-hf", dest="vs_hf", action="store_true",
                 help="also time HF transformers' torch MT5 (eager and torch.compile)")
  p.add_argument("--hf-batch", type=int, action="append", help="HF torch.compile batch sizes")
  p.add_argument("--hf-eager-batch", type=int, action="append", help="HF eager batch sizes")
  p.add_argument("--no-ours", dest="no_ours", action="store_true",
                 help="time only the HF rows (with --vs-hf)")
  p.add_argument("--profile", metavar="DIR",
                 help="trace one step of the first row into DIR and rank its XLA ops "
                      "(prints the table, writes DIR/top_ops.json); no timing rows")
  p.add_argument("--ceiling", type=float,
                 help="bf16 matmul TFLOP/s measured earlier (skips measuring it)")
  p.add_argument("--timeout", type=float, default=420, help="seconds per measurement")
  p.add_argument("--json", help="write the results here as JSON")
  p.add_argument("--jsonl", help="append every finished row (failed ones too) to this file")
  p.add_argument("--_child", help=argparse.SUPPRESS)
  return p


def row_specs(args) -> list[dict]:
  """Our rows: the options as given at each --batch, or the (selected) lever ladder."""
  base = {"kind": "xmtf", "dropout": args.dropout, "scan_layers": args.scan,
          "remat_policy": args.remat, "loss_chunk": args.loss_chunk,
          "head_dtype": args.head_dtype, "attention_impl": args.attention,
          "xla_flags": args.xla_flags, "data": args.data}
  batches = args.batch
  if not args.ladder:
    return [dict(base, batch=b, name=args.name) for b in batches]
  ladder = [dict(s, batch=batches[0]) for s in ladder_specs(base)]
  order = (range(len(ladder)) if args.ladder_rows is None
           else [int(i) for i in args.ladder_rows.split(",")])
  return [ladder[i] for i in order] + [dict(ladder[-1], batch=b) for b in args.best_batch]


def _resolve_defaults(args, backend: str) -> None:
  defaults = CPU_DEFAULTS if backend == "cpu" else ACCELERATOR_DEFAULTS
  unset = [k for k in defaults if getattr(args, k) is None]
  for k in unset:
    setattr(args, k, defaults[k])
  if unset and backend == "cpu":
    print(f"CPU backend: {', '.join(f'{k} {getattr(args, k)}' for k in unset)} (CPU-sized "
          "defaults; mt5-large at batch 32 needs an accelerator: pass --model etc. to "
          "override)", flush=True)


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if args._child:
    print("CHILDJSON:" + json.dumps(child(json.loads(args._child), args)), flush=True)
    return 0
  result = {"rows": []}

  def save():
    if args.json:
      with open(args.json, "w") as f:
        json.dump(result, f, indent=2)

  def record(row):
    row.pop("stdout", None)
    # Rows print as they finish (a GPU ladder takes minutes), under one header; the summary
    # does not print them again.
    print(table([row], header=len(result["rows"]) == 0), flush=True)
    result["rows"].append(row)
    if args.jsonl:
      with open(args.jsonl, "a") as f:
        f.write(json.dumps(dict(row, model=args.model, inputs=args.inputs,
                                targets=args.targets)) + "\n")
    save()

  # The ceiling child also says which backend the rows will run on (the parent does not
  # touch the device: a GPU's memory belongs to the children). Given the ceiling and the
  # sizes, there is nothing to ask it (bench/gpu_run.sh: one probe for many calls).
  if args.ceiling and None not in (args.model, args.inputs, args.targets):
    got = {"ceiling_tflops": args.ceiling, "backend": "as given", "device": "not probed"}
    args.batch = args.batch or ACCELERATOR_DEFAULTS["batch"]
    args.steps = args.steps or ACCELERATOR_DEFAULTS["steps"]
  else:
    got = run_child({"kind": "ceiling", "measure": not args.ceiling}, _with_sizes(args),
                    args.timeout)
  if "failed" in got:
    print(f"xmtf bench train: the device probe failed: {got['failed']}", file=sys.stderr)
    return 1
  _resolve_defaults(args, got["backend"])
  if args.profile:
    args.steps = 1
  ceiling = result["ceiling_tflops"] = args.ceiling or got["ceiling_tflops"]
  flops = train_flops_per_example(model_config(args.model), args.inputs, args.targets)
  result.update(model=args.model, inputs=args.inputs, targets=args.targets,
                flops_per_example=flops, backend=got["backend"], device=got["device"])
  print(f"{got['device']} ({got['backend']}); bf16 matmul ceiling: {ceiling:.3g} TFLOP/s",
        flush=True)
  if args.profile:
    return _profile(args, result, save)
  if args.check or args.only_check:
    got = run_child({"kind": "check", "model": args.check_model,
                     "dtypes": args.check_dtypes.split(",")}, args, args.timeout)
    from xmtf_pipeline.tools.bench_checks import checks_table
    checks = got.get("checks") or [json.loads(x[len("CHECKROW:"):]) for x in
                                   got.get("stdout", "").splitlines() if x.startswith("CHECKROW:")]
    result["checks"] = checks
    if "failed" in got:
      result["checks_failed"] = got["failed"]
      print(f"--check did not finish: {got['failed']} ({len(checks)} rows before)", flush=True)
    if checks:
      print(checks_table(checks), flush=True)
    save()
    if args.only_check:
      return 0 if "failed" not in got and all(c.get("ok", True) for c in checks) else 1
  specs = [] if args.no_ours else row_specs(args)
  if args.vs_hf:  # batch 0 leaves that mode out
    specs += [{"kind": "hf", "batch": b, "compile": False, "data": args.data}
              for b in args.hf_eager_batch or [8] if b]
    specs += [{"kind": "hf", "batch": b, "compile": True, "data": args.data}
              for b in args.hf_batch or [16] if b]
  for spec in specs:
    record(_finish(run_child(spec, args, args.timeout), flops, ceiling, args.inputs,
                   args.targets))
  _summarise(result, args)
  save()
  if specs and all("failed" in r for r in result["rows"]):
    print(f"xmtf bench train: every row failed ({len(specs)})", file=sys.stderr)
    return 1
  return 0


def _with_sizes(args):
  """Args for the ceiling probe, whose command line needs sizes before defaults exist."""
  probe = argparse.Namespace(**vars(args))
  probe.model, probe.inputs, probe.targets, probe.steps = "mt5_tiny", 8, 8, 1
  return probe


def _profile(args, result: dict, save) -> int:
  from xmtf_pipeline.tools import bench_profile
  spec = dict(row_specs(args)[0], steps=1, profile_dir=os.path.abspath(args.profile))
  os.makedirs(args.profile, exist_ok=True)
  got = run_child(spec, argparse.Namespace(**dict(vars(args), steps=1)), args.timeout)
  result["profile_row"] = {k: v for k, v in got.items() if k not in ("profile", "stdout")}
  if "failed" in got:
    print(f"profile of {spec['name']} failed: {got['failed']}", flush=True)
    save()
    return 1
  result["profile"] = got["profile"]
  title = (f"{args.model} {args.inputs}/{args.targets} batch {spec['batch']} "
           f"({spec['name']}, data {spec['data']}): ")
  print(bench_profile.profile_table(got["profile"], title), flush=True)
  with open(os.path.join(args.profile, "top_ops.json"), "w") as f:
    json.dump(result, f, indent=2)
  save()
  return 0


def _summarise(result: dict, args) -> None:
  rows = result["rows"]
  print(f"{args.model} {args.inputs}/{args.targets}: {result['flops_per_example'] / 1e12:.3f} "
        f"TFLOP per example (fwd+bwd); bf16 matmul ceiling measured "
        f"{result['ceiling_tflops']:.1f} TFLOP/s")
  ok = [r for r in rows if "failed" not in r]
  ours = [r for r in ok if r["engine"].startswith("xmtf")]
  hf = [r for r in ok if "compile" in r["engine"]]
  if ours and hf:
    best = max(ours, key=lambda r: r["examples_per_s"])
    ref = max(hf, key=lambda r: r["examples_per_s"])
    result["ratio_vs_hf_compile"] = best["examples_per_s"] / ref["examples_per_s"]
    print(f"xmtf / HF torch.compile: {result['ratio_vs_hf_compile']:.2f}x")
  print("JSON:" + json.dumps(result))


if __name__ == "__main__":
  sys.exit(main())
