"""XLA's own memory accounting of the real train step, for ``xmtf plan``.

The train step is built exactly as ``xmtf train`` builds it (``trainer.jit_train_step``
with the run's model, optimizer, schedule, microbatches and partitioner), lowered with
abstract inputs (``jax.ShapeDtypeStruct``: nothing is allocated) for the plan's mesh and
per-device batch, compiled by the local backend, and its ``memory_analysis()`` read:

  argument  the train state and the batch (per device)
  output    the new state and the statistics
  alias     output bytes written into donated argument buffers (the state)
  temp      everything else XLA keeps live at once: activations saved for the backward
            pass, gradients, logits, collective buffers, scratch
  peak      argument + output - alias + temp

On the CPU backend the mesh is made of fake host devices
(``--xla_force_host_platform_device_count``); that flag must be set before jax
starts, so a compile needing more devices than this process has runs in a
subprocess (``python -m xmtf_pipeline.tools.memory_compile``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

GIB = 1024 ** 3

# The memory figures come from XLA's buffer assignment, before code generation: turning
# LLVM's optimisations off halves the compile and leaves every figure unchanged (measured
# on mt5_tiny). The program is never run.
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
# XLA:CPU has no bfloat16 dots: it upcasts their operands to float32, and loop-invariant code
# motion then moves the upcast of each stacked weight out of the layer scan, so a float32 copy
# of every layer's weights is live at once (mT0-xl with bf16 storage: 49.95 GiB against 32.09
# without the pass; bench/NOTES.md "Memory levers"). A GPU or TPU dot takes bf16 as it is, so
# for bfloat16-stored parameters the CPU stand-in compiles without that pass, and says so.
BF16_STORAGE_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}
BF16_STORAGE_NOTE = ("bf16 storage: compiled without XLA:CPU's while-loop-invariant-code-motion, "
                     "which hoists CPU-only float32 upcasts of the stacked weights out of the "
                     "layer scan (GPUs and TPUs have bf16 dots)")

# What a compile on this (CPU) backend cannot know about a TPU or GPU run.
CPU_CAVEATS = (
    "XLA:CPU figures, not TPU/GPU ones. A CPU compile cannot know: (1) XLA:TPU/GPU's own "
    "rematerialisation pass, which recomputes activations when the program exceeds the "
    "device's memory (CPU has no limit, so never does); (2) their fusion decisions (a TPU "
    "fusion may never materialise a tensor the CPU keeps, e.g. the float32 logits' "
    "gradient); (3) layout padding/tiling (TPU pads minor dimensions to 128 and second-minor "
    "to 8, or 16 for bf16); (4) bf16 handling (XLA:CPU may upcast bf16 work to f32 "
    "temporaries); (5) buffers of real collectives on an interconnect; (6) allocator "
    "fragmentation and the runtime's own reservations (program, infeed, stack).")


@dataclasses.dataclass
class CompiledMemory:
  """Per-device bytes from ``compiled.memory_analysis()``."""
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  generated_code_bytes: int
  devices: int  # devices in the compiled mesh
  backend: str
  compile_seconds: float
  scan_layers: bool
  note: str = ""  # how the compile differs from the default, when it does

  @property
  def peak_bytes(self) -> int:
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def of(cls, compiled, devices: int, seconds: float, scan_layers: bool,
         note: str = "") -> CompiledMemory:
    """``compiled.memory_analysis()`` of a compiled program on ``devices`` devices."""
    import jax
    m = compiled.memory_analysis()
    return cls(int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
               int(m.alias_size_in_bytes), int(m.temp_size_in_bytes),
               int(m.generated_code_size_in_bytes), devices, jax.default_backend(),
               round(seconds, 1), bool(scan_layers), note)

  @classmethod
  def from_json(cls, text: str) -> CompiledMemory:
    return cls(**json.loads(text))


def abstract_batch(global_batch: int, lengths: dict[str, int], pack: bool, sharding=None):
  """The EncDecFeatureConverter features of one global batch, as ShapeDtypeStructs."""
  import jax
  import jax.numpy as jnp
  shapes = {"encoder_input_tokens": lengths["inputs"], "decoder_input_tokens": lengths["targets"],
            "decoder_target_tokens": lengths["targets"],
            "decoder_loss_weights": lengths["targets"]}
  if pack:
    shapes.update(encoder_segment_ids=lengths["inputs"], encoder_positions=lengths["inputs"],
                  decoder_segment_ids=lengths["targets"], decoder_positions=lengths["targets"])
  return {k: jax.ShapeDtypeStruct((global_batch, n), jnp.int32, sharding=sharding)
          for k, n in shapes.items()}


def compile_train_step(model, optimizer, learning_rate_fn, partitioner, devices: int,
                       per_device_batch: int, lengths: dict[str, int], num_microbatches: int = 1,
                       pack: bool = False) -> CompiledMemory:
  """Compiles the sharded train step on ``devices`` local devices; reads its memory."""
  import jax

  from xmtf_pipeline import trainer
  available = jax.devices()
  if len(available) < devices:
    raise ValueError(f"{devices} devices needed, {len(available)} present; run through "
                     "compile_in_child(), which starts a process with enough fake devices.")
  partitioner = partitioner.with_devices(available[:devices])
  data = partitioner.data_parallel_size
  state = trainer.abstract_state(model.config, trainer.optimizer_for(model, optimizer),
                                 partitioner)
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, state)
  step = trainer.jit_train_step(model, optimizer, learning_rate_fn, num_microbatches,
                                partitioner, shardings)
  batch = abstract_batch(per_device_batch * num_microbatches * data, lengths, pack,
                         partitioner.batch_sharding)
  rng = jax.ShapeDtypeStruct((2,), jax.numpy.uint32)
  start = time.perf_counter()
  lowered = step.lower(trainer.TrainState.from_state_dict(state), batch, rng)
  options, note = dict(COMPILER_OPTIONS), ""
  if jax.default_backend() == "cpu" and "bfloat16" in (optimizer.param_dtype,
                                                        optimizer.accumulator_dtype):
    options.update(BF16_STORAGE_OPTIONS)
    note = BF16_STORAGE_NOTE
  compiled = lowered.compile(options)
  seconds = time.perf_counter() - start
  return CompiledMemory.of(compiled, devices, seconds, model.config.scan_layers, note)


def compile_eval_step(model, partitioner, devices: int, per_device_batch: int,
                      eval_shape: dict[str, int]) -> CompiledMemory:
  """Compiles xmtf eval's scoring step (rank classification: ``per_device_batch`` prompts of
  ``eval_shape['inputs']`` tokens, each with ``choices`` answers of ``targets`` tokens) on
  ``devices`` local devices, the parameters sharded as eval restores them; reads its memory."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from xmtf_pipeline import params as params_lib
  from xmtf_pipeline import rank_classification
  available = jax.devices()
  if len(available) < devices:
    raise ValueError(f"{devices} devices needed, {len(available)} present; run through "
                     "compile_in_child(), which starts a process with enough fake devices.")
  partitioner = partitioner.with_devices(available[:devices])
  boxed = params_lib.abstract_variables(model.config)["params"]
  shardings = partitioner.param_shardings(boxed)
  params = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed), shardings)
  rows = per_device_batch * partitioner.data_parallel_size
  enc = jax.ShapeDtypeStruct((rows, eval_shape["inputs"]), jnp.int32)
  tgt = jax.ShapeDtypeStruct((rows, eval_shape["choices"], eval_shape["targets"]), jnp.int32)
  start = time.perf_counter()
  fn = rank_classification.partitioned_score_fn(model.module, params, partitioner)
  compiled = fn.lower(params, enc, tgt).compile(COMPILER_OPTIONS)
  seconds = time.perf_counter() - start
  return CompiledMemory.of(compiled, devices, seconds, model.config.scan_layers)


def with_scanned_layers(model):
  """The same model with its layers in one ``nn.scan`` (same math; XLA compiles one layer)."""
  import copy

  from xmtf_pipeline.network import Transformer
  if model.config.scan_layers:
    return model
  scanned = copy.copy(model)
  scanned.config = model.config.replace(scan_layers=True)
  scanned.module = Transformer(scanned.config)
  return scanned


def run_objects():
  """The parsed run config's model, optimizer, schedule, partitioner and batch settings."""
  from xmtf_pipeline import gin_config
  return dict(model=gin_config.evaluate("@models.EncoderDecoderModel()"),
              optimizer=gin_config.evaluate("@adafactor.Adafactor()"),
              learning_rate_fn=gin_config.evaluate("@schedules.create_learning_rate_scheduler()"),
              partitioner=gin_config.evaluate("@partitioning.Partitioner()"),
              batch_size=int(gin_config.evaluate("%BATCH_SIZE")),
              num_microbatches=int(gin_config.evaluate("%NUM_MICROBATCHES")),
              lengths=dict(gin_config.evaluate("%TASK_FEATURE_LENGTHS")),
              pack=bool(gin_config.evaluate("%PACK")))


def compile_run(run: dict, devices: int, scan_layers: bool = False,
                eval_shape: dict[str, int] | None = None) -> CompiledMemory:
  """``run_objects()``'s train step (or, with ``eval_shape``, eval's scoring step) compiled
  for ``devices`` devices in this process."""
  data = devices // run["partitioner"].model_parallel_size
  model = with_scanned_layers(run["model"]) if scan_layers else run["model"]
  if eval_shape is not None:
    return compile_eval_step(model, run["partitioner"], devices, eval_shape["batch"] // data,
                             eval_shape)
  return compile_train_step(model, run["optimizer"], run["learning_rate_fn"], run["partitioner"],
                            devices, run["batch_size"] // data // run["num_microbatches"],
                            run["lengths"], run["num_microbatches"], run["pack"])


def compile_in_child(gin_files, bindings, devices: int, scan_layers: bool = False,
                     timeout: float | None = None,
                     eval_shape: dict[str, int] | None = None) -> CompiledMemory:
  """The compile in a fresh process with ``devices`` fake CPU devices (XLA_FLAGS is read
  once, when jax starts)."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for `import tasks`
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p),
             XLA_FLAGS=" ".join([os.environ.get("XLA_FLAGS", ""),
                                 f"--xla_force_host_platform_device_count={devices}"]).strip())
  cmd = [sys.executable, "-m", "xmtf_pipeline.tools.memory_compile", f"--devices={devices}"]
  cmd += [f"--gin_file={f}" for f in gin_files] + [f"--gin_bindings={b}" for b in bindings]
  cmd += ["--scan_layers"] if scan_layers else []
  cmd += [f"--eval_shape={json.dumps(eval_shape)}"] if eval_shape else []
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    raise RuntimeError(f"the compile took over {timeout:.0f} s (--compile_timeout)") from None
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode or not lines:
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"the compile subprocess failed ({proc.returncode}): {tail}")
  return CompiledMemory.from_json(lines[-1])


def main(argv: list[str] | None = None) -> int:
  import argparse

  from xmtf_pipeline import gin_config
  p = argparse.ArgumentParser(prog="python -m xmtf_pipeline.tools.memory_compile",
                              description="Compile a run config's train step; print "
                              "memory_analysis() as JSON (per device).")
  p.add_argument("--gin_file", action="append", required=True)
  p.add_argument("--gin_bindings", action="append", default=[])
  p.add_argument("--devices", type=int, required=True)
  p.add_argument("--scan_layers", action="store_true")
  p.add_argument("--eval_shape", type=json.loads, default=None,
                 help="JSON {batch, inputs, targets, choices}: compile eval's scoring step")
  args = p.parse_args(gin_config.rewrite_gin_args(argv if argv is not None else sys.argv[1:]))
  gin_config.parse(args.gin_file, ["MODEL_DIR = '/tmp/plan'", *args.gin_bindings],
                   finalize=False)
  print(compile_run(run_objects(), args.devices, args.scan_layers, args.eval_shape).to_json(),
        flush=True)
  return 0


if __name__ == "__main__":
  from xmtf_pipeline import tensorflow_import
  tensorflow_import.import_quietly()
  sys.exit(main())
