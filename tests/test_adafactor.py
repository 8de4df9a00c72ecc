"""One Adafactor step against T5X's formulas, recomputed here in float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmtf_pipeline.adafactor import Adafactor


def reference_step(p, g, slots, step, lr, decay_rate=0.8, step_offset=0, eps1=1e-30, eps2=1e-3,
                   clip=1.0, min_dim=128):
  """T5X adafactor.py, written independently in float64."""
  p, g = p.astype(np.float64), g.astype(np.float64)
  t = step - step_offset
  # T5X evaluates the decay in float32 (jnp.array(i, float32) + 1); near step 1e6,
  # 1 - beta2 ~ 1.6e-5, so its float32 rounding is part of the formula.
  beta2 = float(np.float32(1.0) - (np.float32(t) + np.float32(1.0)) ** np.float32(-decay_rate))
  scale = lr * max(np.sqrt(np.mean(p ** 2)), eps2)
  g2 = g ** 2 + eps1
  new = {}
  factored = p.ndim == 2 and sorted(p.shape)[-2] >= min_dim
  if factored:
    # Largest axis averaged out for v_row, second largest for v_col; ties: axis 0 = rows.
    d0 = 1 if p.shape[1] >= p.shape[0] else 0
    d1 = 1 - d0
    v_row = beta2 * slots["v_row"] + (1 - beta2) * g2.mean(axis=d0)
    v_col = beta2 * slots["v_col"] + (1 - beta2) * g2.mean(axis=d1)
    new["v_row"], new["v_col"] = v_row, v_col
    r = (v_row / v_row.mean()) ** -0.5
    c = v_col ** -0.5
    y = g * np.expand_dims(r, d0) * np.expand_dims(c, d1)
  else:
    v = beta2 * slots["v"] + (1 - beta2) * g2
    new["v"] = v
    y = g / np.sqrt(v)
  y = y / max(1.0, np.sqrt(np.mean(y ** 2)) / clip)
  return p - scale * y, new


SHAPES = {
    "kernel_wide": (160, 200),   # factored, d0 = 1
    "kernel_tall": (300, 130),   # factored, d0 = 0
    "square": (128, 128),        # factored, tie -> axis 0 rows
    "embedding_small_dim": (500, 64),  # second dim < 128: unfactored
    "norm_scale": (96,),         # rank 1: unfactored
}


def _problem(seed):
  rng = np.random.default_rng(seed)
  params = {k: rng.standard_normal(s).astype(np.float32) * 0.05 for k, s in SHAPES.items()}
  params["norm_scale"] = np.full(SHAPES["norm_scale"], 1e-4, np.float32)  # eps2 floor kicks in
  grads = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
  grads["kernel_tall"] *= 50.0  # large update -> clipping active
  return params, grads


@pytest.mark.parametrize("step,step_offset,warm", [(0, 0, False), (1_000_000, 0, True),
                                                    (1_000_000, 1_000_000, True), (7, 0, True)])
def test_one_step_matches_t5x_formulas(step, step_offset, warm):
  params, grads = _problem(step % 97)
  opt = Adafactor(decay_rate=0.8, step_offset=step_offset)
  state = opt.init(jax.tree_util.tree_map(jnp.asarray, params))
  # Warm accumulators (as restored from a checkpoint) make beta2 matter.
  rng = np.random.default_rng(1)
  if warm:
    state["param_states"] = jax.tree_util.tree_map(
        lambda x: jnp.asarray(rng.uniform(0.5, 2.0, x.shape).astype(np.float32))
        if x.shape != (1,) else x, state["param_states"])
  state["step"] = jnp.asarray(step, jnp.int32)
  lr = 1e-3
  new_params, new_state = opt.apply_gradient(
      jax.tree_util.tree_map(jnp.asarray, params), state,
      jax.tree_util.tree_map(jnp.asarray, grads), jnp.float32(lr))
  assert int(new_state["step"]) == step + 1
  for name in SHAPES:
    slots = {k: np.asarray(v, np.float64) for k, v in state["param_states"][name].items()}
    want_p, want_slots = reference_step(params[name], grads[name], slots, step, lr,
                                        step_offset=step_offset)
    np.testing.assert_allclose(np.asarray(new_params[name]), want_p, rtol=1e-5, atol=1e-9)
    for slot, want in want_slots.items():
      got = np.asarray(new_state["param_states"][name][slot])
      np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"{name}/{slot}")
    # Unused slots are T5X's float32 zeros of shape (1,).
    for slot in {"v_row", "v_col", "v", "m"} - set(want_slots):
      np.testing.assert_array_equal(np.asarray(new_state["param_states"][name][slot]),
                                    np.zeros((1,), np.float32))


def test_state_layout_matches_t5x():
  opt = Adafactor()
  state = opt.init({"emb": jnp.zeros((1000, 256)), "k": jnp.zeros((256, 300)),
                    "rel": jnp.zeros((6, 32)), "scale": jnp.zeros((256,))})
  ps = state["param_states"]
  assert state["step"].dtype == jnp.int32
  assert ps["emb"]["v_row"].shape == (256,) and ps["emb"]["v_col"].shape == (1000,)
  assert ps["k"]["v_row"].shape == (256,) and ps["k"]["v_col"].shape == (300,)
  assert ps["rel"]["v"].shape == (6, 32) and ps["rel"]["v_row"].shape == (1,)
  assert ps["scale"]["v"].shape == (256,)
  assert ps["emb"]["m"].shape == (1,)


def test_first_update_uses_only_current_gradient():
  """beta2 = 0 at t = 0: the update is independent of whatever the accumulators hold."""
  opt = Adafactor()
  p = {"w": jnp.ones((4,)) * 0.5}
  g = {"w": jnp.asarray([1.0, -2.0, 3.0, -4.0])}
  s1 = opt.init(p)
  s2 = jax.tree_util.tree_map(lambda x: x + 7.0 if x.dtype == jnp.float32 else x, s1)
  a, _ = opt.apply_gradient(p, s1, g, jnp.float32(0.1))
  b, _ = opt.apply_gradient(p, s2, g, jnp.float32(0.1))
  np.testing.assert_array_equal(np.asarray(a["w"]), np.asarray(b["w"]))
