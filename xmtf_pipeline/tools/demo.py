"""``xmtf demo``: the main job on the embedded default, on CPU, in a few minutes.

Finetunes the tiny mT5 (gin/models/mt5_tiny.gin) on the bundled xP3-format
sample (tasks/data/xp3_sample) through the real ``xmtf train`` path with mT0's
objective (AVERAGE_PER_SEQUENCE, z-loss, Adafactor), then shows the validation
loss before and after and a few greedy outputs.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

from xmtf_pipeline import (
  checkpoints,
  decoding,
  gin_config,
  input_pipeline,
  models,
  params,
  run_lock,
)
from xmtf_pipeline import train as train_lib
from xmtf_pipeline.adafactor import Adafactor
from xmtf_pipeline.trainer import TrainState, jit_eval_step

MARKER = ".xmtf_demo"
TASK = "xp3_sample"
LENGTHS = {"inputs": 160, "targets": 40}  # no sample example is truncated


def _flags(model_dir: str, steps: int, batch_size: int, model: str) -> list[str]:
  macros = {
      "MODEL_DIR": f'"{model_dir}"',
      "MIXTURE_OR_TASK_NAME": f'"{TASK}"',
      "MIXTURE_OR_TASK_MODULE": '"tasks.xp3"',
      "TASK_FEATURE_LENGTHS": repr(LENGTHS),
      "TRAIN_STEPS": str(steps),
      "INITIAL_CHECKPOINT_PATH": "None",
      "BATCH_SIZE": str(batch_size),
      "DROPOUT_RATE": "0.1",
      "LOSS_NORMALIZING_FACTOR": '"AVERAGE_PER_SEQUENCE"',  # mT0's objective
      "RANDOM_SEED": "0",
      "LOG_PERIOD": str(max(steps // 10, 1)),
      "SAVE_PERIOD": str(steps),
      "EVAL_PERIOD": str(steps),
      "EVAL_STEPS": "8",
      "schedules.create_learning_rate_scheduler.base_learning_rate": "0.01",
  }
  return ([f"--gin_file={gin_config.model_gin_file(model)}", "--gin_file=runs/finetune.gin"]
          + [f"--gin.{k}={v}" for k, v in macros.items()])


def _fresh_dir(model_dir: str) -> None:
  """Reuses the demo's own folder; refuses to clear anything the demo did not create."""
  if os.path.exists(model_dir) and os.listdir(model_dir):
    if not os.path.exists(os.path.join(model_dir, MARKER)):
      raise SystemExit(f"xmtf demo: {model_dir} exists and was not made by the demo; "
                       "pass --model_dir with a new folder.")
    busy = run_lock.holder(model_dir)
    if busy:
      raise SystemExit(f"xmtf demo: {model_dir} is in use by another run ({busy}); nothing was "
                       "cleared: wait for it, or pass --model_dir with a new folder.")
    shutil.rmtree(model_dir)
  os.makedirs(model_dir, exist_ok=True)
  open(os.path.join(model_dir, MARKER), "w").close()


def _examples(n: int):
  import seqio
  task = seqio.get_mixture_or_task(TASK)
  ds = task.get_dataset(LENGTHS, split="validation", shuffle=False, seed=0)
  vocab = task.output_features["targets"].vocabulary
  return list(ds.take(n).as_numpy_iterator()), vocab


def default_model_dir() -> str:
  """Outside any source tree: a ``runs/`` folder in a repository root once shadowed gin's
  ``include 'runs/...'`` and left the checkout dirty for the tests that followed."""
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "xmtf", "demo")


def main(model: str = "mt5_tiny", model_dir: str | None = None, steps: int = 400,
         batch_size: int = 32, eval_examples: int | None = None) -> int:
  t0 = time.time()
  model_dir = os.path.abspath(model_dir or default_model_dir())
  _fresh_dir(model_dir)
  import tasks.xp3  # noqa: F401  (registers the sample mixture)

  config = gin_config.load_model_config(model)
  print(f"[1/4] model {model}: {params.count(config):,} parameters; task {TASK} "
        f"(bundled xP3-format sample), lengths {LENGTHS}, batch {batch_size}, {steps} steps")
  eval_cfg = input_pipeline.DatasetConfig(TASK, LENGTHS, "validation", batch_size, False, 42,
                                          pack=True)
  em = models.EncoderDecoderModel(config, loss_normalizing_factor="AVERAGE_PER_SEQUENCE")
  init = params.init_params(config, jax.random.PRNGKey(0))  # = the run's init (RANDOM_SEED 0)
  eval_step, eval_ds = jit_eval_step(em), train_lib.train_eval_dataset(eval_cfg, 8)
  before = train_lib.run_train_eval(eval_step, init, eval_cfg, eval_ds)
  print(f"[2/4] validation before training: loss {before['loss']:.4f}, "
        f"token accuracy {before['accuracy']:.3f}")

  print(f"[3/4] xmtf train {' '.join(_flags(model_dir, steps, batch_size, model)[:2])} ...")
  t_train = time.time()
  rc, result = train_lib.run_main(_flags(model_dir, steps, batch_size, model))
  if rc:
    return rc
  if result is not None and result.preempted:  # SIGTERM: saved; stop here, as a train would
    print(f"[demo] stopped by SIGTERM at step {result.final_step} (checkpoint saved in "
          f"{model_dir}); skipping evaluation and export.", flush=True)
    return 128 + signal.SIGTERM
  t_train = time.time() - t_train

  state = TrainState.create(init, Adafactor())
  ckpt = checkpoints.Checkpointer(model_dir)
  step, state_dict, _ = ckpt.restore_latest(state.state_dict())
  ckpt.close()
  trained = state_dict["target"]
  after = train_lib.run_train_eval(eval_step, trained, eval_cfg, eval_ds)
  print(f"[4/4] validation after {step} steps: loss {after['loss']:.4f} "
        f"(before {before['loss']:.4f}), token accuracy {after['accuracy']:.3f} "
        f"(before {before['accuracy']:.3f}); training took {t_train:.0f}s")

  examples, vocab = _examples(6)
  enc = np.zeros((len(examples), LENGTHS["inputs"]), np.int32)
  for i, ex in enumerate(examples):
    enc[i, :len(ex["inputs"])] = ex["inputs"]
  out = np.asarray(jax.jit(decoding.greedy_decode, static_argnums=(0, 3))(
      em.module, trained, jnp.asarray(enc), LENGTHS["targets"]))
  print("greedy outputs on validation prompts:")
  for ex, pred in zip(examples, out):
    prompt = vocab.decode(ex["inputs"].tolist()).replace("\n", " | ")
    print(f"  prompt: {prompt[:90]}")
    print(f"    target: {vocab.decode(ex['targets'].tolist())!r}   "
          f"prediction: {vocab.decode(pred.tolist())!r}")
  from xmtf_pipeline import evaluation
  t_eval = time.time()
  table = evaluation.run_suite(em, trained, vocab, datasets=("copa", "cb", "rte", "winogrande"),
                               max_examples=eval_examples)
  rows = f"the first {eval_examples}" if eval_examples else "the"
  print(f"[eval] zero-shot rank classification on {rows} bundled real validation rows (5 "
        f"prompts each; a tiny model is near chance, as expected), {time.time() - t_eval:.0f}s:")
  print(table)
  from xmtf_pipeline.interop import hf_export
  hf_dir = os.path.join(model_dir, "hf")
  hf_export.export(os.path.join(model_dir, f"checkpoint_{step}"), hf_dir, overwrite=True)
  print(f"[export] Hugging Face MT5 directory: {hf_dir} ({', '.join(sorted(os.listdir(hf_dir)))})"
        "; load it with AutoModelForSeq2SeqLM.from_pretrained")
  print(f"demo finished in {time.time() - t0:.0f}s; checkpoints and TensorBoard logs in {model_dir}")
  return 0
