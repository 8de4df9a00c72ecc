"""``xmtf plan``: per-device memory of a run config on a mesh, before renting the chips.

Parameters and Adafactor state are exact (shapes from ``jax.eval_shape``, shards
from the same logical rules the trainer uses). Activations are an estimate: the
per-layer formula of Korthikanti et al. 2022 (16-bit activations saved for the
backward pass, no rematerialisation: s*b*d*(34 + 5*a*s/d) bytes per layer), plus
the decoder's cross-attention and the float32 logits.

Beside the formula, the planner compiles the run's real train step for the plan's
mesh and per-device batch (``memory_compile``: abstract inputs, nothing allocated) and
reads XLA's ``memory_analysis()``; that compiled figure decides the verdict when it
can be had. Both are printed side by side.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap

import jax.numpy as jnp
import numpy as np

from xmtf_pipeline import fused_accumulation, gin_config, params
from xmtf_pipeline.adafactor import Adafactor
from xmtf_pipeline.network import T5Config
from xmtf_pipeline.partitioning import Partitioner
from xmtf_pipeline.tools import memory_compile

GIB = 1024 ** 3


def fmt(n: int) -> str:
  """Bytes as GiB, or MiB below 1 GiB (so mt5_tiny's figures are not 0.00)."""
  return f"{n / GIB:7.2f} GiB" if n >= GIB else f"{n / 1024 ** 2:7.2f} MiB"
# Accelerator memory per device (GiB) and slice sizes (devices = chips).
CHIPS = {"tpu-v4": 32, "tpu-v5e": 16, "tpu-v5p": 95, "a100-40g": 40, "a100-80g": 80,
         "h100": 80, "h200": 141}
SLICES = {"v4-8": ("tpu-v4", 4), "v4-32": ("tpu-v4", 16), "v4-64": ("tpu-v4", 32),
          "v4-128": ("tpu-v4", 64), "v4-256": ("tpu-v4", 128)}


@dataclasses.dataclass
class Plan:
  devices: int
  mesh: dict[str, int]
  per_device_batch: int
  param_bytes: int
  optimizer_bytes: int
  gradient_bytes: int
  activation_bytes: int
  remat_activation_bytes: int
  capacity_bytes: int | None
  remat_policy: str = "none"  # the config's; with remat on, the lower bound is the estimate
  param_dtype: str = "float32"  # Adafactor.param_dtype: the parameters' (and gradients') storage
  accumulator_bytes: int = 0  # the microbatch accumulator, part of gradient_bytes
  accumulator_dtype: str = "float32"
  fused_accumulation: bool = False  # the scanned layers' microbatch gradients are not held
  compiled: memory_compile.CompiledMemory | None = None  # XLA's figure, when compiled
  compile_note: str = ""  # why there is no compiled figure, or how it was made

  @property
  def formula_bytes(self) -> int:
    """The formula's figure for the config as set: no remat -> upper bound, remat -> lower."""
    return self.total_bytes if self.remat_policy == "none" else self.remat_total_bytes

  @property
  def total_bytes(self) -> int:
    return self.param_bytes + self.optimizer_bytes + self.gradient_bytes + self.activation_bytes

  @property
  def remat_total_bytes(self) -> int:
    return (self.param_bytes + self.optimizer_bytes + self.gradient_bytes
            + self.remat_activation_bytes)

  def table(self) -> str:
    short = {"float32": "f32", "bfloat16": "bf16"}[self.param_dtype]
    acc = {"float32": "f32", "bfloat16": "bf16"}[self.accumulator_dtype]
    layers = " unscanned" if self.fused_accumulation else ""
    grads = (f"gradients ({short}{layers} + {acc} accumulator)" if self.accumulator_bytes else
             f"gradients ({short}, transient)")
    rows = [(f"parameters ({short})", self.param_bytes),
            ("Adafactor state (f32)", self.optimizer_bytes), (grads, self.gradient_bytes),
            ("activations (estimate, bf16, no remat)", self.activation_bytes),
            ("total (upper bound)", self.total_bytes),
            ("activations with per-layer remat (est.)", self.remat_activation_bytes),
            ("total (lower bound)", self.remat_total_bytes)]
    lines = [f"mesh {self.mesh} on {self.devices} devices; {self.per_device_batch} examples "
             "per device per microbatch"]
    lines += [f"  {name:<40} {fmt(b):>14}" for name, b in rows]
    if self.compiled is not None:
      lines += self.side_by_side()
      lines += [f"  note: {self.compile_note}"] if self.compile_note else []
    elif self.compile_note:
      lines.append(f"  compiled figure: none ({self.compile_note})")
    if self.capacity_bytes:
      lines.append(f"  {'device memory':<40} {fmt(self.capacity_bytes):>14} -> "
                   f"{self.verdict()}")
    return "\n".join(lines)

  def formula_verdict(self) -> str:
    cap = 0.9 * self.capacity_bytes
    remat_on = self.remat_policy != "none"
    return ("fits" if self.total_bytes <= cap else
            f"fits with remat_policy={self.remat_policy!r}"
            if remat_on and self.remat_total_bytes <= cap else
            "fits only with rematerialisation (XLA's or per-layer)"
            if self.remat_total_bytes <= cap else "does NOT fit")

  def verdict(self) -> str:
    """By the compiled figure when there is one, else by the formula."""
    if self.compiled is None:
      return f"{self.formula_verdict()} by the formula (with 10% headroom)"
    fits = self.compiled.peak_bytes <= 0.9 * self.capacity_bytes
    return (f"{'fits' if fits else 'does NOT fit'} by the compiled figure "
            f"({self.compiled.peak_bytes / GIB:.2f} GiB, with 10% headroom; the formula says: "
            f"{self.formula_verdict()})")

  def side_by_side(self) -> list[str]:
    c = self.compiled
    how = (f"XLA:{c.backend.upper()}, {c.devices}-device mesh"
           + (", layers scanned" if c.scan_layers else "") + f", compiled in {c.compile_seconds:.0f} s")
    formula_rest = self.formula_bytes - self.param_bytes - self.optimizer_bytes
    rows = [("state: parameters + Adafactor", self.param_bytes + self.optimizer_bytes,
             c.argument_bytes, "argument: state + batch"),
            ("gradients + activations + logits", formula_rest,
             c.temp_bytes + c.output_bytes - c.alias_bytes, "temp + undonated output"),
            ("total per device", self.formula_bytes, c.peak_bytes,
             "peak = argument + output - alias + temp")]
    lines = [f"  {'per device, side by side':<34} {'formula':>11} {'compiled':>13}   ({how})"]
    lines += [f"  {name:<34} {fmt(f)} {fmt(x):>13}   {what}" for name, f, x, what in rows]
    if c.note:
      lines += textwrap.wrap(c.note, 98, initial_indent="  ", subsequent_indent="  ")
    if c.backend == "cpu":
      lines += textwrap.wrap(memory_compile.CPU_CAVEATS, 98, initial_indent="  ",
                             subsequent_indent="  ")
    return lines


def _mesh_axes(logical: tuple[str | None, ...], rules) -> list[str | None]:
  """flax's rule: each logical axis takes the first rule whose mesh axis is still free."""
  used, out = set(), []
  for name in logical:
    choice = None
    for lname, mesh_axis in rules:
      if lname == name and (mesh_axis is None or mesh_axis not in used):
        choice = mesh_axis
        break
    if choice is not None:
      used.add(choice)
    out.append(choice)
  return out


def shard_shape(shape, logical, rules, mesh: dict[str, int]) -> tuple[int, ...]:
  return tuple(math.ceil(d / (mesh[a] if a else 1))
               for d, a in zip(shape, _mesh_axes(logical, rules)))


def state_bytes(config: T5Config, partitioner: Partitioner, mesh: dict[str, int],
                optimizer: Adafactor | None = None) -> tuple[int, int]:
  """Per-device bytes of (parameters, Adafactor state) under the partitioner's rules; the
  parameters in ``optimizer.param_dtype`` (float32 unless the storage lever is on)."""
  shapes, logical = params.param_shapes(config), params.logical_axes(config)
  rules = partitioner.rules
  optimizer = optimizer or Adafactor()
  opt = optimizer.for_logical_axes(logical)  # stacked (scanned) layers are batch axes
  itemsize = np.dtype(jnp.dtype(optimizer.param_dtype)).itemsize
  p_bytes, o_bytes = 0, 4  # the int32 step
  for path, shape in shapes.items():
    local = shard_shape(shape, logical[path], rules, mesh)
    p_bytes += itemsize * int(np.prod(local))
    dims = opt.factored_dims(shape, opt.num_batch_dims(path))
    if dims is None:
      o_bytes += 4 * int(np.prod(local)) + 3 * 4  # v like the param; 3 unused (1,) slots
    else:  # v_row, v_col replicated
      d1, d0 = dims
      o_bytes += 4 * (int(np.prod(np.delete(shape, d0))) + int(np.prod(np.delete(shape, d1))))
      o_bytes += 2 * 4
  return p_bytes, o_bytes


def scanned_param_bytes(config: T5Config, partitioner: Partitioner, mesh: dict[str, int],
                        optimizer: Adafactor) -> int:
  """Per-device bytes of the scanned layer stacks' parameters (``*/layers/...``): with
  fused accumulation their microbatch gradient goes straight into the accumulator."""
  shapes, logical = params.param_shapes(config), params.logical_axes(config)
  itemsize = np.dtype(jnp.dtype(optimizer.param_dtype)).itemsize
  return sum(itemsize * int(np.prod(shard_shape(shape, logical[path], partitioner.rules, mesh)))
             for path, shape in shapes.items()
             if fused_accumulation.is_stacked(path.split("/")))


def activation_bytes(config: T5Config, batch: int, len_in: int, len_out: int,
                     model_parallel: int, loss_chunk_length: int = 0) -> tuple[int, int]:
  """(no rematerialisation, per-layer rematerialisation) estimates in bytes.

  With a chunked loss only one chunk's float32 logits (and their gradient) exist.
  """
  d, a, V = config.emb_dim, config.num_heads, config.vocab_size

  def layer(s, b):
    return s * b * d * (34 + 5 * a * s / d)

  enc_layer = layer(len_in, batch)
  dec_layer = layer(len_out, batch) + len_out * batch * d * 12 + 5 * a * len_out * len_in * batch
  logit_positions = min(loss_chunk_length, len_out) if loss_chunk_length else len_out
  logits = 2 * 4 * batch * logit_positions * V  # float32 logits and their gradient
  full = config.num_encoder_layers * enc_layer + config.num_decoder_layers * dec_layer
  # With remat only each layer's input (bf16) is kept, plus one layer's working set; a fused
  # loss keeps one copy of the logits.
  remat = (2 * batch * d * (config.num_encoder_layers * len_in + config.num_decoder_layers * len_out)
           + max(enc_layer, dec_layer))
  return int((full + logits) / model_parallel), int((remat + logits / 2) / model_parallel)


def plan_config(config: T5Config, partitioner: Partitioner, devices: int, batch_size: int,
                lengths: dict[str, int], num_microbatches: int = 1,
                capacity_gib: float | None = None, loss_chunk_length: int = 0,
                optimizer: Adafactor | None = None) -> Plan:
  """The formula's plan. Gradients are one copy of the parameters in their storage dtype
  (jax's gradient of a bfloat16 parameter is bfloat16), plus, with microbatches, the
  accumulator they are summed into (trainer.compute_gradients; Adafactor.accumulator_dtype);
  with fused accumulation the copy holds only the parameters outside the scanned stacks."""
  mp = partitioner.model_parallel_size
  if devices % mp:
    raise ValueError(f"num_partitions={mp} does not divide {devices} devices.")
  mesh = {"data": devices // mp, "model": mp}
  if batch_size % (mesh["data"] * num_microbatches):
    raise ValueError(f"BATCH_SIZE={batch_size} is not divisible by data={mesh['data']} x "
                     f"NUM_MICROBATCHES={num_microbatches}.")
  per_device = batch_size // mesh["data"] // num_microbatches
  optimizer = optimizer or Adafactor()
  p, o = state_bytes(config, partitioner, mesh, optimizer)
  itemsize = np.dtype(jnp.dtype(optimizer.param_dtype)).itemsize
  acc_itemsize = np.dtype(jnp.dtype(optimizer.accumulator_dtype)).itemsize
  accumulator = p // itemsize * acc_itemsize if num_microbatches > 1 else 0
  fused = optimizer.fused_accumulation and num_microbatches > 1 and config.scan_layers
  gradient = p - (scanned_param_bytes(config, partitioner, mesh, optimizer) if fused else 0)
  act, remat = activation_bytes(config, per_device, lengths["inputs"], lengths["targets"], mp,
                                loss_chunk_length)
  return Plan(devices, mesh, per_device, p, o, gradient + accumulator, act, remat,
              int(capacity_gib * GIB) if capacity_gib else None, config.remat_policy,
              optimizer.param_dtype, accumulator, optimizer.accumulator_dtype, fused)


@dataclasses.dataclass
class EvalPlan:
  """Per-device memory of ``xmtf eval``'s scoring step: parameters (as restored, no optimizer
  state or gradients), one layer's activations, the repeated encoder output and the float32
  logits of every (prompt, choice) row."""
  devices: int
  mesh: dict[str, int]
  shape: dict[str, int]  # batch (global prompts), inputs, targets, choices
  param_bytes: int
  activation_bytes: int
  logits_bytes: int
  capacity_bytes: int | None
  compiled: memory_compile.CompiledMemory | None = None
  compile_note: str = ""

  @property
  def total_bytes(self) -> int:
    return self.param_bytes + self.activation_bytes + self.logits_bytes

  def table(self) -> str:
    s = self.shape
    devices = f"{self.devices} device{'s' * (self.devices > 1)}"
    lines = [f"xmtf eval's scoring step: mesh {self.mesh} on {devices}; {s['batch']} prompts a "
             f"batch ({s['batch'] // self.mesh['data']} per device) of {s['inputs']} tokens, {s['choices']} choices of {s['targets']} tokens"]
    rows = [("parameters (f32, as restored)", self.param_bytes),
            ("activations (estimate, one layer)", self.activation_bytes),
            ("logits + log-probs (f32)", self.logits_bytes), ("total (formula)", self.total_bytes)]
    lines += [f"  {name:<40} {fmt(b):>14}" for name, b in rows]
    if self.compiled is not None:
      c = self.compiled
      lines.append(f"  {'compiled (XLA:' + c.backend.upper() + ')':<40} {fmt(c.peak_bytes):>14}"
                   f"   peak = argument {fmt(c.argument_bytes).strip()} + temp "
                   f"{fmt(c.temp_bytes).strip()} + output; {c.devices}-device mesh, compiled in "
                   f"{c.compile_seconds:.0f} s")
      if c.backend == "cpu":
        lines += textwrap.wrap(memory_compile.CPU_CAVEATS, 98, initial_indent="  ",
                               subsequent_indent="  ")
    elif self.compile_note:
      lines.append(f"  compiled figure: none ({self.compile_note})")
    if self.capacity_bytes:
      lines.append(f"  {'device memory':<40} {fmt(self.capacity_bytes):>14} -> {self.verdict()}")
    return "\n".join(lines)

  def verdict(self) -> str:
    cap = 0.9 * self.capacity_bytes
    formula = "fits" if self.total_bytes <= cap else "does NOT fit"
    if self.compiled is None:
      return f"{formula} by the formula (with 10% headroom)"
    fits = self.compiled.peak_bytes <= cap
    return (f"{'fits' if fits else 'does NOT fit'} by the compiled figure "
            f"({self.compiled.peak_bytes / GIB:.2f} GiB, with 10% headroom; the formula says: "
            f"{formula})")


def plan_eval(config: T5Config, partitioner: Partitioner, devices: int, shape: dict[str, int],
              capacity_gib: float | None = None) -> EvalPlan:
  """The formula's per-device memory of eval's scoring step on ``devices`` devices."""
  mp = partitioner.model_parallel_size
  if devices % mp:
    raise ValueError(f"num_partitions={mp} does not divide {devices} devices; set "
                     f"--gin.NUM_PARTITIONS to a divisor of {devices}.")
  if config.num_heads % mp:
    raise ValueError(f"num_partitions={mp} does not divide the model's {config.num_heads} "
                     "attention heads.")
  mesh = {"data": devices // mp, "model": mp}
  shape = {**shape, "batch": -(-shape["batch"] // mesh["data"]) * mesh["data"]}
  b, c = shape["batch"] // mesh["data"], shape["choices"]
  d, a, V = config.emb_dim, config.num_heads, config.vocab_size
  len_in, len_out = shape["inputs"], shape["targets"]
  width = 2 if config.dtype == "bfloat16" else 4

  def layer(s, rows):  # the saved-activation formula: an upper bound of one layer's working set
    return s * rows * d * (34 + 5 * a * s / d) * width / 2

  encoded = width * b * c * len_in * d  # the encoder output, repeated for every choice
  one_layer = max(layer(len_in, b), layer(len_out, b * c) + 5 * a * len_out * len_in * b * c)
  logits = 2 * 4 * b * c * len_out * V  # float32 logits and log-softmax
  params_bytes, _ = state_bytes(config, partitioner, mesh)
  return EvalPlan(devices, mesh, shape, params_bytes, int(encoded + one_layer / mp),
                  int(logits / mp), int(capacity_gib * GIB) if capacity_gib else None)


def plan_eval_from_gin(gin_files, bindings, devices: int, chip: str | None, shape: dict[str, int],
                       compile: str = "off", timeout: float | None = None) -> EvalPlan:
  """``plan_eval`` of a config's model and partitioner, with XLA's compiled figure unless
  ``compile='off'`` (the layers scanned: the same math, one layer for XLA to compile)."""
  gin_config.parse(gin_files, ["MODEL_DIR = '/tmp/plan'", *bindings], finalize=False)
  run = memory_compile.run_objects()
  plan = plan_eval(run["model"].config, run["partitioner"], devices, shape,
                   CHIPS[chip] if chip else None)
  if compile == "off":
    plan.compile_note = "--compile=off"
    return plan
  import jax
  try:
    if jax.device_count() >= devices:
      plan.compiled = memory_compile.compile_run(run, devices, True, plan.shape)
    else:
      plan.compiled = memory_compile.compile_in_child(gin_files, bindings, devices, True, timeout,
                                                      plan.shape)
  except Exception as e:
    if compile == "on":
      raise ValueError(f"compiling the scoring step failed: {e}") from e
    plan.compile_note = f"compile failed: {str(e).splitlines()[0][:200]}"
  return plan


# Macros the planner evaluates itself (a run config reads them through the trainer too).
_MACROS_READ = ("MODEL_CONFIG", "BATCH_SIZE", "TASK_FEATURE_LENGTHS", "NUM_MICROBATCHES")


def plan_from_gin(gin_files, bindings, devices: int, chip: str | None, compile: str = "off",
                  scan_for_compile: bool = True, compile_timeout: float | None = None) -> Plan:
  """The formula's plan of a run config, with XLA's compiled figure unless ``compile='off'``.

  ``scan_for_compile`` compiles the step with the layers in one scan (one layer for
  XLA to compile, not 2 x num_layers), whatever the config's ``scan_layers``.
  """
  gin_config.parse(gin_files, ["MODEL_DIR = '/tmp/plan'", *bindings], finalize=False)
  gin_config.check_unread_macros(read_by_code=_MACROS_READ)
  config = gin_config.evaluate("%MODEL_CONFIG")
  run = memory_compile.run_objects()
  plan = plan_config(config, run["partitioner"], devices, run["batch_size"], run["lengths"],
                     run["num_microbatches"], CHIPS[chip] if chip else None,
                     run["model"].loss_chunk_length, run["optimizer"])
  if compile == "off":
    plan.compile_note = "--compile=off"
    return plan
  import jax
  if scan_for_compile and not config.scan_layers:
    plan.compile_note = ("the compile scans the layers (fast); the config runs them one by one, "
                         "which XLA may schedule differently (--compile_unscanned compiles that)")
  try:
    if jax.device_count() >= devices:
      plan.compiled = memory_compile.compile_run(run, devices, scan_for_compile)
    else:
      plan.compiled = memory_compile.compile_in_child(gin_files, bindings, devices,
                                                      scan_for_compile, compile_timeout)
  except Exception as e:  # the formula still stands; say why there is no compiled figure
    if compile == "on":
      raise ValueError(f"compiling the train step failed: {e}") from e
    plan.compile_note = f"compile failed: {str(e).splitlines()[0][:200]}"
  return plan


def main(argv: list[str] | None = None) -> int:
  import argparse
  p = argparse.ArgumentParser(prog="xmtf plan", description=__doc__.split("\n")[0])
  p.add_argument("--gin_file", action="append", required=True)
  p.add_argument("--gin_bindings", action="append", default=[])
  p.add_argument("--slice", choices=sorted(SLICES), help="a TPU slice (sets chip and devices)")
  p.add_argument("--chip", choices=sorted(CHIPS), help="device type (memory per device)")
  p.add_argument("--devices", type=int, help="number of devices (chips)")
  p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                 help="compile the real train step for the plan's mesh and read XLA's memory "
                 "figure (default auto: compile, fall back to the formula if it fails; on: fail "
                 "if it fails; off: the formula only)")
  p.add_argument("--compile_unscanned", action="store_true",
                 help="compile the layers one by one as the config has them (slower) instead "
                 "of in one scan")
  p.add_argument("--compile_timeout", type=float, default=900.0,
                 help="seconds allowed for the compile subprocess")
  p.add_argument("--job", choices=("train", "eval"), default="train",
                 help="train: the run config's train step (default); eval: xmtf eval's scoring "
                 "step for the config's model and partitioner (NUM_PARTITIONS)")
  p.add_argument("--eval_shape", default="32,512,16,4", metavar="BATCH,INPUTS,TARGETS,CHOICES",
                 help="--job eval: prompts a batch, prompt tokens, answer tokens, answers a "
                 "prompt (default 32,512,16,4: eval.gin's batch at its token budget, 512 a "
                 "prompt)")
  args = p.parse_args(gin_config.rewrite_gin_args(argv or []))
  chip, devices = args.chip, args.devices
  if args.slice:
    chip, devices = SLICES[args.slice]
  if not devices:
    p.error("give --devices (and --chip) or --slice")
  try:
    if args.job == "eval":
      values = args.eval_shape.split(",")
      if len(values) != 4 or not all(v.strip().isdigit() and int(v) > 0 for v in values):
        raise ValueError(f"--eval_shape={args.eval_shape}: give four positive integers "
                         "BATCH,INPUTS,TARGETS,CHOICES, e.g. 32,512,16,4.")
      shape = dict(zip(("batch", "inputs", "targets", "choices"), map(int, values)))
      plan = plan_eval_from_gin(args.gin_file, args.gin_bindings, devices, chip, shape,
                                args.compile, args.compile_timeout)
    else:
      plan = plan_from_gin(args.gin_file, args.gin_bindings, devices, chip, args.compile,
                           not args.compile_unscanned, args.compile_timeout)
  except (gin_config.GinConfigError, ValueError) as e:
    print(f"xmtf plan: error: {e}")
    return 2
  where = f"{args.slice} = " if args.slice else ""
  print(f"{', '.join(args.gin_file)} on {where}{devices} x {chip or 'devices'}")
  print(plan.table())
  return 0
