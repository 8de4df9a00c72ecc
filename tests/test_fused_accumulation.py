"""Issue 28's lean levers that change where, not what, is computed.

``Adafactor.fused_accumulation`` adds the scanned layers' microbatch gradients into the running
sum inside the backward pass (fused_accumulation.py); ``Adafactor.sliced_update`` computes the
update one parameter, one layer or one row chunk at a time (sliced_update.py). Both are checked
against the plain path: gradients to 1e-6 in float32, the bfloat16 sums and roundings bitwise,
the update to float32 summation order.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_trainer import LENGTHS, TINY, _assert_trees_close, _batch

from xmtf_pipeline import fused_accumulation, models, params, rounding, sliced_update, trainer
from xmtf_pipeline.adafactor import Adafactor

SCANNED = TINY.replace(scan_layers=True, remat_policy="full", dropout_rate=0.0)


def _gradients(model, tree, batch, fused, accumulator_dtype="float32", rounding_rng=None,
               dropout_rng=None):
  fn = jax.jit(trainer.compute_gradients, static_argnums=(0, 4, 5, 7))
  return fn(model, tree, batch, dropout_rng, 4, accumulator_dtype, rounding_rng, fused)


def test_fused_accumulation_equals_plain_accumulation_in_float32():
  # Loss chunks, as the one-GPU recipes (the stack's backward pass does not depend on them).
  model = models.EncoderDecoderModel(SCANNED, loss_normalizing_factor="AVERAGE_PER_SEQUENCE",
                                     loss_chunk_length=4)
  tree = params.init_params(SCANNED, jax.random.PRNGKey(0))
  batch = _batch(pack=False)
  plain, plain_stats = _gradients(model, tree, batch, fused=False)
  fused, fused_stats = _gradients(model, tree, batch, fused=True)
  assert float(fused_stats["loss"]) == pytest.approx(float(plain_stats["loss"]), rel=1e-6)
  _assert_trees_close(fused, plain, 1e-6)
  # The fused path really ran: it is a different program from the plain one.
  hlo = jax.jit(trainer.compute_gradients, static_argnums=(0, 4, 5, 7)).lower(
      model, tree, batch, None, 4, "float32", None, True).as_text()
  assert hlo != jax.jit(trainer.compute_gradients, static_argnums=(0, 4, 5, 7)).lower(
      model, tree, batch, None, 4, "float32", None, False).as_text()


def test_fused_accumulation_with_dropout_sums_the_microbatch_gradients():
  """With dropout the fused stack draws its own per-layer keys (network._fused_layers), so
  compare it with itself: 4 fused microbatches equal the sum of each microbatch's fused
  gradient taken alone (1 microbatch each, the same dropout key)."""
  config = SCANNED.replace(dropout_rate=0.1)
  model = models.EncoderDecoderModel(config, loss_normalizing_factor="AVERAGE_PER_SEQUENCE")
  tree = params.init_params(config, jax.random.PRNGKey(0))
  batch = _batch(pack=False)
  rng = jax.random.PRNGKey(5)
  fused, _ = _gradients(model, tree, batch, True, dropout_rng=rng)
  no_dropout, _ = _gradients(model, tree, batch, True)
  leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda a, b: float(jnp.max(jnp.abs(a - b))), fused, no_dropout))
  assert max(leaves) > 1e-4, "dropout changed nothing: the keys did not reach the layers"
  again, _ = _gradients(model, tree, batch, True, dropout_rng=rng)
  assert all(bool(jnp.all(a == b)) for a, b in
             zip(jax.tree_util.tree_leaves(fused), jax.tree_util.tree_leaves(again)))


def test_fused_bfloat16_sums_round_like_the_whole_leaf():
  """A layer-by-layer stochastically rounded sum is bitwise the whole-leaf rounding: each
  element gets the noise of its flat index in the whole stacked leaf."""
  rng = np.random.default_rng(0)
  total = jnp.asarray(rng.normal(size=(3, 40, 24)), jnp.bfloat16)
  grad = jnp.asarray(rng.normal(size=(3, 40, 24)) * 1e-2, jnp.float32)
  key = jax.random.PRNGKey(11)
  whole = rounding.store(total.astype(jnp.float32) + grad, jnp.bfloat16, key)
  sliced = total
  for layer in (2, 0, 1):  # the backward pass visits the layers from the last
    sliced = fused_accumulation.add_slice(sliced, grad[layer], jnp.asarray(layer), key)
  assert sliced.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(sliced, np.float32), np.asarray(whole, np.float32))
  # ...and differs from a rounding that ignored the offset (every slice with layer 0's noise).
  unshifted = jnp.stack([rounding.store(total[i].astype(jnp.float32) + grad[i], jnp.bfloat16, key)
                         for i in range(3)])
  assert not bool(jnp.all(unshifted == whole))


def test_fused_bfloat16_accumulation_equals_plain():
  """Bitwise equal on the development machine (2026-12-06, every leaf); the bound leaves room
  for another XLA's float32 summation order to flip a rare rounding."""
  config = SCANNED.replace(dtype="bfloat16")
  model = models.EncoderDecoderModel(config, loss_normalizing_factor="AVERAGE_PER_SEQUENCE")
  lean = Adafactor(param_dtype="bfloat16", accumulator_dtype="bfloat16", stochastic_rounding=True)
  tree = lean.store(params.init_params(config, jax.random.PRNGKey(0)))
  batch = _batch(pack=False)
  key = jax.random.PRNGKey(3)
  plain, _ = _gradients(model, tree, batch, False, "bfloat16", key)
  fused, _ = _gradients(model, tree, batch, True, "bfloat16", key)
  flat_plain = jax.tree_util.tree_flatten_with_path(plain)[0]
  for (path, a), b in zip(flat_plain, jax.tree_util.tree_leaves(fused)):
    assert a.dtype == b.dtype == jnp.bfloat16
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    # The layer gradients summed in float32 agree to float32 rounding; the same keys then
    # round both the same way except where that float32 difference crosses a rounding point.
    mismatch = np.mean(a32 != b32)
    assert mismatch <= 0.01, (jax.tree_util.keystr(path), mismatch)
    scale = np.max(np.abs(a32)) or 1.0
    assert np.max(np.abs(a32 - b32)) <= 2 ** -7 * scale, jax.tree_util.keystr(path)


def test_fused_accumulation_refuses_what_it_cannot_do():
  with pytest.raises(ValueError, match="accumulator_dtype to param_dtype"):
    Adafactor(fused_accumulation=True, param_dtype="bfloat16", stochastic_rounding=True)
  model = models.EncoderDecoderModel(TINY)  # layers not scanned
  tree = params.init_params(TINY, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="scan_layers = True"):
    trainer.compute_gradients(model, tree, _batch(pack=False), None, 4, fused=True)
  stacked = {"w": jnp.zeros((2, 4, 4), jnp.bfloat16)}
  with pytest.raises(ValueError, match="must have the parameters' dtype"):
    fused_accumulation.layer_stack(lambda p, h, c, a, r: h, stacked,
                                   {"w": jnp.zeros((2, 4, 4), jnp.float32)}, None,
                                   jnp.zeros((1, 4)), (), (), None)


# ---------------------------------------------------------------------------------------------
# sliced_update: the same Adafactor update one parameter, layer or row chunk at a time.

AXES = {"encoder/layers/k": ("layers", "embed", "mlp"), "encoder/layers/s": ("layers", "embed"),
        "emb": ("vocab", "embed"), "head": ("embed", "vocab"), "thin": ("vocab", "embed")}


def _tree(rng):
  return {"encoder": {"layers": {"k": rng.normal(size=(3, 160, 200)),
                                 "s": rng.normal(size=(3, 50))}},
          "emb": rng.normal(size=(300, 160)), "head": rng.normal(size=(160, 300)),
          "thin": rng.normal(size=(1200, 40))}  # 40 < 128 columns: not factored


@pytest.mark.parametrize("options", [
    {}, {"param_dtype": "bfloat16", "stochastic_rounding": True},
    {"beta1": 0.9, "weight_decay_rate": 0.01, "skip_nan_updates": True,
     "max_parameter_scale": 0.5}], ids=["t5x", "bf16-stochastic-rounding", "momentum-decay-nan"])
def test_sliced_update_equals_the_whole_update(monkeypatch, options):
  monkeypatch.setattr(sliced_update, "CHUNK_ELEMENTS", 8000)  # emb, head, thin go in row chunks
  assert sliced_update.num_row_chunks((300, 160)) == 6
  rng = np.random.default_rng(0)
  whole = Adafactor(**options).for_logical_axes(AXES)
  sliced = dataclasses.replace(whole, sliced_update=True)
  dtype = jnp.dtype(whole.param_dtype)
  tree = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), _tree(rng))
  grads = jax.tree_util.tree_map(lambda x: jnp.asarray(x * 1e-2, dtype), _tree(rng))
  state = whole.init(tree)
  for step in range(3):
    key = jax.random.PRNGKey(step)
    want = jax.jit(whole.apply_gradient)(tree, state, grads, 1e-2, key)
    got = jax.jit(sliced.apply_gradient)(tree, state, grads, 1e-2, key)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(want)[0],
                            jax.tree_util.tree_leaves(got)):
      a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
      assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
      if a.dtype == jnp.bfloat16:
        # The same noise rounds both; a float32 summation-order difference flips a rounding
        # only where it crosses a rounding point: rarely, and by one bfloat16 spacing.
        assert np.mean(a32 != b32) < 1e-3, jax.tree_util.keystr(path)
        assert np.all(np.abs(a32 - b32) <= 2 ** -7 * np.abs(a32)), jax.tree_util.keystr(path)
      else:  # float32 summation order only: a few ulps of the leaf's largest value
        scale = np.max(np.abs(a32)) or 1.0
        assert np.max(np.abs(a32 - b32)) <= 4e-7 * scale, jax.tree_util.keystr(path)
    tree, state = want


def test_planner_counts_fused_accumulation():
  from xmtf_pipeline.partitioning import Partitioner
  from xmtf_pipeline.tools import planner
  lean = Adafactor(param_dtype="bfloat16", accumulator_dtype="bfloat16", stochastic_rounding=True)
  fused = dataclasses.replace(lean, fused_accumulation=True)
  tree = lean.store(params.init_params(SCANNED, jax.random.PRNGKey(0)))
  stacked = sum(x.nbytes for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
                if fused_accumulation.is_stacked(path))
  stored = sum(x.nbytes for x in jax.tree_util.tree_leaves(tree))
  assert 0 < stacked < stored
  plain = planner.plan_config(SCANNED, Partitioner(), 1, 8, LENGTHS, 4, optimizer=lean)
  lean_plan = planner.plan_config(SCANNED, Partitioner(), 1, 8, LENGTHS, 4, optimizer=fused)
  assert plain.gradient_bytes == 2 * stored
  assert lean_plan.gradient_bytes == 2 * stored - stacked
  assert "gradients (bf16 unscanned + bf16 accumulator)" in lean_plan.table()
  one = planner.plan_config(SCANNED, Partitioner(), 1, 8, LENGTHS, 1, optimizer=fused)
  assert one.gradient_bytes == stored  # no microbatches: nothing to fuse into
