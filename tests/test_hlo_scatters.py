"""Issue 13, item 2: no low-precision or contended scatter in any train, eval or score step.

The step of mt5_small is lowered (abstract shapes: nothing allocated) under every
configuration of ``bench.LADDER``, with microbatches, and as the eval and score steps;
``hlo_audit`` lists its scatters. Why the lowered StableHLO and not the compiled HLO:
XLA:CPU normalises a bf16 scatter to float32 when it compiles, so the compiled CPU
program of the old relative-position gather showed ``f32[4,32] scatter`` where the
lowered one, what a GPU receives, showed ``tensor<4x32xbf16>`` (checked by hand on
mt5_tiny; compiling also takes ~25 s per configuration, lowering a few).
"""

import contextlib
import functools
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmtf_pipeline import models, schedules, trainer
from xmtf_pipeline.adafactor import Adafactor
from xmtf_pipeline.partitioning import Partitioner
from xmtf_pipeline.tools import bench, hlo_audit

MODEL, BATCH, LEN_IN, LEN_OUT = "mt5_small", 4, 64, 16
VOCAB, EMB = bench.model_config(MODEL).vocab_size, bench.model_config(MODEL).emb_dim
# Worst-case updates that may meet on one output row. A take_along_axis gradient puts 1
# on each; the relative-position gather put q*k (a million at 1024) on 32 rows.
MAX_PER_ROW = 64
ALLOWED = {
    (VOCAB, EMB): "token-embedding gradient: float32, so native atomic adds on GPUs; every "
                  "padding token (id 0) lands on row 0, which `xmtf bench embed` and the "
                  "--data mt0 rows of `xmtf bench train` measure",
}
BASE = {"kind": "xmtf", "dropout": 0.1, "scan_layers": False, "remat_policy": "none",
        "loss_chunk": 0, "head_dtype": "float32", "attention_impl": "einsum", "xla_flags": ""}
LADDER = {s["name"]: s for s in bench.ladder_specs(BASE)}
# (ladder row, microbatches); the XLA-flags row is the cuDNN row's program (flags act
# when compiling), so it is lowered once.
TRAIN_CASES = [(name, 1) for name in LADDER if not LADDER[name]["xla_flags"]] + [
    ("T5X defaults", 2), ("+ dropout 0 (for fused attention)", 2)]


def _model(spec):
  options = {k: spec[k] for k in bench.CONFIG_OPTIONS if k in spec}
  cfg = bench.model_config(MODEL, dropout=spec["dropout"], **options)
  return models.EncoderDecoderModel(cfg, z_loss=1e-4,
                                    loss_normalizing_factor="AVERAGE_PER_SEQUENCE",
                                    loss_chunk_length=spec["loss_chunk"])


def _abstract_batch():
  b = bench.synthetic_batch(BATCH, LEN_IN, LEN_OUT, VOCAB)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in b.items()}


@contextlib.contextmanager
def _cuda_lowering(config):
  """cuDNN attention lowers only for CUDA: lower that row for it, telling JAX's
  version check (which needs the library, not a GPU) a cuDNN 9.10 is there."""
  if config.attention_impl != "cudnn":
    yield None
    return
  from jax._src.cudnn import fused_attention_stablehlo as cudnn
  with mock.patch.object(cudnn, "check_cudnn_version", lambda: 91000):
    yield ("cuda",)


def _lower(what, model, micro, part, optimizer=None):
  with _cuda_lowering(model.config) as platforms:
    opt = trainer.optimizer_for(model, optimizer or Adafactor())
    state = trainer.abstract_state(model.config, opt, part)
    if what == "train":
      lr = schedules.create_learning_rate_scheduler("constant", base_learning_rate=1e-3)
      fn = jax.jit(functools.partial(trainer.train_step, model, opt, lr, micro))
      args = (trainer.TrainState.from_state_dict(state), _abstract_batch(),
              jax.ShapeDtypeStruct((2,), jnp.uint32))
    else:
      fn = jax.jit(functools.partial(trainer.eval_step, model) if what == "eval"
                   else model.score_batch)
      args = (state["target"], _abstract_batch())
    with part.mesh, nn.logical_axis_rules(part.rules):
      return fn.trace(*args).lower(lowering_platforms=platforms).as_text()


@pytest.fixture(scope="module")
def lowered():
  """Lowered StableHLO text per (what, ladder row, microbatches), each lowered once."""
  part = Partitioner().with_devices(jax.devices()[:1])
  cache = {}

  def get(what, name, micro=1):
    if (what, name, micro) not in cache:
      cache[what, name, micro] = _lower(what, _model(LADDER[name]), micro, part)
    return cache[what, name, micro]
  return get


def _audit(text):
  found = hlo_audit.scatters(text)
  return found, hlo_audit.violations(found, MAX_PER_ROW, ALLOWED)


@pytest.mark.parametrize("name,micro", TRAIN_CASES)
def test_train_step_has_no_low_precision_or_contended_scatter(lowered, name, micro):
  text = lowered("train", name, micro)
  if LADDER[name]["attention_impl"] == "cudnn":  # the fused kernel's backward is in it
    assert "__cudnn$fmha" in text and "Backward" in text
  found, bad = _audit(text)
  assert not bad, "\n".join(bad)
  # The embedding gradient (encoder and decoder lookups) is the only scatter left.
  assert found and all(s.operand_shape == (VOCAB, EMB) and s.dtype == "f32" for s in found)


def test_bfloat16_parameter_storage_keeps_every_scatter_float32():
  """Issue 28's storage lever: a bf16-stored embedding table is read as float32, so its
  gradient stays the one float32 scatter (a bf16 one serialises on GPUs: 1.7% MFU)."""
  part = Partitioner().with_devices(jax.devices()[:1])
  lean = Adafactor(param_dtype="bfloat16", stochastic_rounding=True)
  text = _lower("train", _model(LADDER["T5X defaults"]), 2, part, lean)
  assert "tensor<250112x512xbf16>" in text  # the table is stored in bf16
  found, bad = _audit(text)
  assert not bad, "\n".join(bad)
  assert found and all(s.operand_shape == (VOCAB, EMB) and s.dtype == "f32" for s in found)


@pytest.mark.parametrize("what", ["eval", "score"])
@pytest.mark.parametrize("name", ["T5X defaults", "+ cuDNN attention"])
def test_eval_and_score_steps_have_no_scatter(lowered, what, name):
  found, bad = _audit(lowered(what, name))
  assert not bad and not found, found


def test_audit_flags_the_old_bf16_gathers_and_counts_per_row():
  """The checks can fail: the old relative-position lookup (a gather from the bf16 table)
  is flagged twice over; a take_along_axis gradient has one update per row."""
  table = jnp.zeros((4, 32), jnp.float32)
  buckets = jnp.asarray(np.arange(64 * 64).reshape(64, 64) % 32)

  def old_relpos(t):
    return jnp.sum(jnp.take(t.astype(jnp.bfloat16), buckets, axis=1).astype(jnp.float32))

  (s,) = hlo_audit.scatters(jax.jit(jax.grad(old_relpos)).lower(table).as_text())
  assert (s.operand_shape, s.dtype, s.updates, s.max_per_row) == ((4, 32), "bf16", 4096, 4096)
  bad = hlo_audit.violations([s], MAX_PER_ROW, {})
  assert len(bad) == 1 and "bf16" in bad[0]
  f32 = hlo_audit.Scatter((4, 32), "f32", 4096, 4096)
  assert hlo_audit.violations([f32], MAX_PER_ROW, {}) == [
      f"{f32}: more than {MAX_PER_ROW} per row, and not allowed"]
  assert hlo_audit.violations([f32], MAX_PER_ROW, {(4, 32): "test"}) == []

  logits = jnp.zeros((2, 5, 7))
  targets = jnp.zeros((2, 5, 1), jnp.int32)
  text = jax.jit(jax.grad(lambda x: jnp.sum(jnp.take_along_axis(x, targets, -1)))
                 ).lower(logits).as_text()
  (s,) = hlo_audit.scatters(text)
  assert s.updates == 10 and s.max_per_row == 1
