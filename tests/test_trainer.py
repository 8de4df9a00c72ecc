"""The train step: microbatching, learning, train_eval (in process, synthetic task)."""

import jax
import jax.numpy as jnp
import micro_model
import numpy as np
import pytest

import tasks.synthetic  # noqa: F401  (registers synthetic_copy)
from xmtf_pipeline import checkpoints, input_pipeline, models, params, schedules, trainer
from xmtf_pipeline import train as train_lib
from xmtf_pipeline.adafactor import Adafactor
from xmtf_pipeline.network import T5Config

TINY = T5Config(vocab_size=512, emb_dim=64, num_heads=4, num_encoder_layers=2,
                num_decoder_layers=2, head_dim=16, mlp_dim=128, dtype="float32")
# TINY with one layer each (tests/micro_model.py) where the claim is about batching, not depth: each
# test compiles four programs. The copy task keeps TINY: with one layer each its accuracy at step
# 600 was 0.952, too close to its 0.95 bar.
MICRO = micro_model.config()
LENGTHS = {"inputs": 16, "targets": 8}


PACKED_LENGTHS = {"inputs": 48, "targets": 24}  # room for 3-4 examples per row


def _cfg(split="train", batch_size=32, pack=False, shuffle=True, seed=0, lengths=LENGTHS):
  return input_pipeline.DatasetConfig("synthetic_copy", lengths, split, batch_size, shuffle, seed,
                                      pack=pack)


def _batch(pack, batch_size=16):
  lengths = PACKED_LENGTHS if pack else LENGTHS
  ds = input_pipeline.get_dataset(_cfg(batch_size=batch_size, pack=pack, lengths=lengths), seed=3)
  return {k: jnp.asarray(v) for k, v in next(input_pipeline.iterate(ds)).items()}


@pytest.mark.parametrize("factor,pack", [("AVERAGE_PER_SEQUENCE", True),
                                         ("NUM_REAL_TARGET_TOKENS", True), (None, False)])
def test_microbatches_give_the_same_update(factor, pack):
  model = models.EncoderDecoderModel(MICRO, z_loss=1e-4, loss_normalizing_factor=factor)
  opt = Adafactor()
  lr = schedules.create_learning_rate_scheduler("constant", base_learning_rate=1e-2)
  state = trainer.TrainState.create(params.init_params(MICRO, jax.random.PRNGKey(0)), opt)
  batch = _batch(pack)
  rng = jax.random.PRNGKey(1)
  # Gradients: the sum over microbatches equals the one-batch gradient.
  grads = jax.jit(trainer.compute_gradients, static_argnums=(0, 4))
  g1, s1 = grads(model, state.params, batch, None, 1)
  g4, s4 = grads(model, state.params, batch, None, 4)
  assert float(s4["loss"]) == pytest.approx(float(s1["loss"]), rel=1e-6)
  _assert_trees_close(g4, g1, 1e-6)
  # Updates. Adafactor divides each element by its own second-moment estimate,
  # which amplifies float32 summation-order noise of near-zero gradient elements
  # (2-4e-7 in the gradients): measured up to 1.7e-6 at step 1, <= 5e-7 with restored
  # accumulators at step 1_000_000 (mT0's case).
  step_fn = jax.jit(trainer.train_step, static_argnums=(0, 1, 2, 3))
  state, _ = step_fn(model, opt, lr, 1, state, batch, rng)
  for step, rel in ((1, 5e-6), (1_000_000, 1e-6)):
    start = state.replace(opt_state=dict(state.opt_state, step=jnp.asarray(step, jnp.int32)))
    one, _ = step_fn(model, opt, lr, 1, start, batch, rng)
    four, _ = step_fn(model, opt, lr, 4, start, batch, rng)
    delta1 = jax.tree_util.tree_map(jnp.subtract, one.params, start.params)
    delta4 = jax.tree_util.tree_map(jnp.subtract, four.params, start.params)
    _assert_trees_close(delta4, delta1, rel)


def _assert_trees_close(got, want, rel):
  """Whole tree: ||got - want|| <= rel * ||want||; each array within 10 x rel.


  float32 sums in another order differ by ~1e-7 relative; a few small arrays
  (norm scales, whose gradients cancel over many tokens) reach ~1e-6 alone.
  """
  flat_got, flat_want = params.flatten(got), params.flatten(want)
  num = den = 0.0
  for path, w in flat_want.items():
    w, g = np.asarray(w, np.float64), np.asarray(flat_got[path], np.float64)
    err = np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30)
    assert err <= 10 * rel, (path, err)
    num += np.sum((g - w) ** 2)
    den += np.sum(w ** 2)
  assert np.sqrt(num / den) <= rel, np.sqrt(num / den)
  print(f"relative difference {np.sqrt(num / den):.2e}")


def test_tiny_model_learns_copy_task(tmp_path):
  model = models.EncoderDecoderModel(TINY, z_loss=1e-4)
  result = train_lib.train(
      model=model, model_dir=str(tmp_path / "run"), train_dataset_cfg=_cfg(),
      train_eval_dataset_cfg=_cfg("validation", shuffle=False, seed=42),
      checkpoint_cfg=checkpoints.CheckpointConfig(save_period=10_000),
      optimizer=Adafactor(),
      learning_rate_fn=schedules.create_learning_rate_scheduler("constant",
                                                                base_learning_rate=1e-2),
      total_steps=600, eval_period=600, eval_steps=8, random_seed=0, log_period=100,
      progress_bar=False)
  assert result.final_step == 600
  assert result.last_loss < result.first_loss / 4
  assert result.eval_metrics["accuracy"] >= 0.95, result.eval_metrics
  # TensorBoard event files and the operative config are written.
  assert list((tmp_path / "run" / "train").glob("events.out.tfevents.*"))
  assert list((tmp_path / "run" / "train_eval").glob("events.out.tfevents.*"))
  assert (tmp_path / "run" / "checkpoint_600").is_dir()


def test_packed_and_unpacked_eval_agree_on_average_per_sequence():
  """AVERAGE_PER_SEQUENCE on a packed batch equals the same examples unpacked."""
  model = models.EncoderDecoderModel(MICRO, loss_normalizing_factor="AVERAGE_PER_SEQUENCE")
  p = params.init_params(MICRO, jax.random.PRNGKey(5))
  packed = _batch(True, batch_size=4)
  assert int(packed["decoder_segment_ids"].max()) >= 2  # really packed
  # Unpack: every (row, segment) becomes its own row.
  rows = {k: [] for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")}
  for b in range(packed["encoder_segment_ids"].shape[0]):
    for s in range(1, int(packed["encoder_segment_ids"][b].max()) + 1):
      for k, seg_key in (("encoder_input_tokens", "encoder_segment_ids"),
                         ("decoder_input_tokens", "decoder_segment_ids"),
                         ("decoder_target_tokens", "decoder_segment_ids")):
        L = PACKED_LENGTHS["inputs" if k.startswith("encoder") else "targets"]
        vals = np.asarray(packed[k][b])[np.asarray(packed[seg_key][b]) == s]
        rows[k].append(np.pad(vals, (0, L - len(vals))))
  unpacked = {k: jnp.asarray(np.stack(v)) for k, v in rows.items()}
  a = trainer.eval_step(model, p, packed)
  b = trainer.eval_step(model, p, unpacked)
  assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5)


def test_train_eval_dataset_is_built_once_and_each_pass_sees_the_same_batches(tmp_path,
                                                                               monkeypatch):
  """As in T5X, the train_eval pipeline is built once per run and iterated afresh at each
  evaluation (a mixture's pipeline costs ~0.3 s per task to build)."""
  builds = []
  build = input_pipeline.get_dataset
  monkeypatch.setattr(input_pipeline, "get_dataset",
                      lambda cfg, *a, **k: builds.append(cfg.split) or build(cfg, *a, **k))
  model = models.EncoderDecoderModel(MICRO)
  eval_cfg = _cfg("validation", batch_size=8, shuffle=False, seed=42)
  result = train_lib.train(
      model=model, model_dir=str(tmp_path / "run"), train_dataset_cfg=_cfg(batch_size=8),
      train_eval_dataset_cfg=eval_cfg, checkpoint_cfg=checkpoints.CheckpointConfig(save_period=6),
      optimizer=Adafactor(), learning_rate_fn=schedules.create_learning_rate_scheduler(
          "constant", base_learning_rate=1e-2),
      total_steps=6, eval_period=2, eval_steps=2, random_seed=0, log_period=2, progress_bar=False)
  assert result.eval_metrics["batches"] == 2
  assert builds == ["train", "validation"]  # three evaluations, one build
  # Each pass over the one dataset gives the metrics of a new build.
  p = params.init_params(MICRO, jax.random.PRNGKey(0))
  eval_fn = trainer.jit_eval_step(model)
  ds = train_lib.train_eval_dataset(eval_cfg, 2)
  first = train_lib.run_train_eval(eval_fn, p, eval_cfg, ds)
  again = train_lib.run_train_eval(eval_fn, p, eval_cfg, ds)
  fresh = train_lib.run_train_eval(eval_fn, p, eval_cfg, train_lib.train_eval_dataset(eval_cfg, 2))
  assert first == again == fresh and first["batches"] == 2
