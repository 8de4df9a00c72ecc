"""Issue 28's first memory lever: parameters stored in bfloat16, updated with stochastic rounding.

Adafactor's arithmetic stays float32 (checked against test_adafactor's float64 formulas); the
rounding is unbiased (a statistical bound that round-to-nearest fails); its keys come from the
run's seed and the step, so kill -9 and resume stays bitwise (test_train_runs); checkpoints
hold the bfloat16 values and restore for eval as float32 (the same numbers).
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from test_adafactor import reference_step

from xmtf_pipeline import rounding
from xmtf_pipeline.adafactor import Adafactor

BF16 = ml_dtypes.bfloat16


def _neighbours(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The bfloat16 values just below and above |x| (same sign), in float64."""
  bits = x.astype(np.float32).view(np.uint32)
  low = (bits & 0xFFFF0000).view(np.float32).astype(np.float64)
  high = ((bits & 0xFFFF0000) + 0x10000).view(np.float32).astype(np.float64)
  return low, high


def test_stochastic_rounding_is_unbiased_within_a_stated_bound():
  """Mean of N roundings of each value vs the float32 value.

  Each rounding is low or high (a spacing h apart) with p = (x - low) / h, so the mean of N has
  standard deviation at most h / (2 sqrt N). The bound is 6 of those: for 64 values the chance
  of a false failure is below 1e-7, and with fixed seeds the test is deterministic anyway.
  """
  rng = np.random.default_rng(0)
  x = (rng.standard_normal(64) * 10.0 ** rng.uniform(-6, 3, 64)).astype(np.float32)
  x[0] = np.float32(1.0 + 2.0 ** -10)  # an eighth of a spacing above 1: nearest always drops it
  n = 20_000
  keys = jax.random.split(jax.random.PRNGKey(42), n)
  draws = np.asarray(jax.vmap(lambda k: rounding.stochastic_round_to_bfloat16(x, k))(keys)
                     .astype(jnp.float32), np.float64)
  low, high = _neighbours(x)
  h = np.abs(high - low)
  bound = 6 * h / (2 * np.sqrt(n))
  lo, hi = np.minimum(low, high), np.maximum(low, high)
  assert np.all((draws == lo) | (draws == hi)), "a rounding is not one of the two neighbours"
  error = np.abs(draws.mean(axis=0) - x.astype(np.float64))
  assert np.all(error <= bound), (error / bound).max()
  # Round-to-nearest fails the same bound (it is biased by up to h/2 per value).
  nearest = np.abs(x.astype(BF16).astype(np.float64) - x.astype(np.float64))
  assert np.sum(nearest > bound) > 50


def test_special_values_and_exact_bfloat16_values_are_kept():
  x = jnp.asarray([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -2.5, 3.0e38], jnp.float32)
  for seed in range(5):
    got = np.asarray(rounding.stochastic_round_to_bfloat16(x, jax.random.PRNGKey(seed))
                     .astype(jnp.float32))
    np.testing.assert_array_equal(got[:7], np.asarray(x)[:7])
    assert got[7] == np.float32(np.asarray(x[7]).astype(BF16)) or np.isinf(got[7]) or got[7] in (
        _neighbours(np.asarray(x[7:8]))[0][0], _neighbours(np.asarray(x[7:8]))[1][0])


def test_the_same_key_rounds_the_same_way():
  x = jnp.linspace(-3.0, 3.0, 1001, dtype=jnp.float32) + 1e-4
  a = rounding.stochastic_round_to_bfloat16(x, jax.random.PRNGKey(1))
  b = rounding.stochastic_round_to_bfloat16(x, jax.random.PRNGKey(1))
  c = rounding.stochastic_round_to_bfloat16(x, jax.random.PRNGKey(2))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("shape", [(160, 200), (500, 64), (96,)])
@pytest.mark.parametrize("stochastic", [False, True])
def test_bfloat16_storage_updates_in_float32(shape, stochastic):
  """The stored bf16 parameter is read as float32, updated by T5X's formulas (test_adafactor's
  float64 reference) and only then rounded: to nearest, or to one of the two neighbours."""
  rng = np.random.default_rng(3)
  p = (rng.standard_normal(shape) * 0.05).astype(BF16)
  g = (rng.standard_normal(shape) * 0.01).astype(np.float32)
  opt = Adafactor(param_dtype="bfloat16", stochastic_rounding=stochastic)
  state = opt.init_param_state(jnp.asarray(p))
  slots = {k: np.asarray(v, np.float64) for k, v in state.items()}
  new, _ = opt.update_param(jnp.int32(5), jnp.float32(1e-2), jnp.asarray(p), state,
                            jnp.asarray(g), rounding_key=jax.random.PRNGKey(0) if stochastic
                            else None)
  assert new.dtype == jnp.bfloat16
  want, _ = reference_step(p.astype(np.float32), g, slots, 5, 1e-2)
  got = np.asarray(new.astype(jnp.float32), np.float64)
  if not stochastic:
    np.testing.assert_array_equal(got, want.astype(np.float32).astype(BF16).astype(np.float64))
  else:
    low, high = _neighbours(want.astype(np.float32))
    assert np.all((got == low) | (got == high) | (got == want.astype(np.float32)))
    assert 0.2 < np.mean(got == high) < 0.8  # both directions are taken


def test_stochastic_rounding_without_a_key_is_refused():
  opt = Adafactor(param_dtype="bfloat16", stochastic_rounding=True)
  params = {"w": jnp.zeros((4,), jnp.bfloat16)}
  with pytest.raises(ValueError, match="rounding_rng"):
    opt.apply_gradient(params, opt.init(params), params, jnp.float32(1.0))


def test_a_bad_param_dtype_names_the_setting():
  with pytest.raises(ValueError, match="Adafactor.param_dtype must be float32 or bfloat16"):
    Adafactor(param_dtype="float16")


def test_a_bfloat16_checkpoint_restores_for_eval_and_exports_as_its_values(tmp_path):
  """Checkpoints hold the stored bfloat16 parameters (the Adafactor state stays float32); eval
  restores them as float32 and export-hf writes them, both with the same numbers."""
  from interop_testlib import TINY, operative_config
  from safetensors.numpy import load_file

  from xmtf_pipeline import checkpoints, cli
  from xmtf_pipeline import params as params_lib
  from xmtf_pipeline.interop import hf_mapping, restore
  from xmtf_pipeline.trainer import TrainState

  opt = Adafactor(param_dtype="bfloat16", stochastic_rounding=True)
  state = TrainState.create(params_lib.init_params(TINY, jax.random.PRNGKey(0)), opt)
  ckpt = checkpoints.Checkpointer(str(tmp_path / "run"))
  ckpt.save(3, state.state_dict(), {"batches": 3, "random_seed": 0, "data_seed": 0})
  ckpt.close()
  (tmp_path / "run" / "config.gin").write_text(operative_config(TINY))
  reader = restore.open_reader(str(tmp_path / "run"))
  assert np.asarray(reader.read("target/token_embedder/embedding")).dtype == BF16
  assert np.asarray(reader.read("state/param_states/encoder/layers_0/mlp/wi_0/kernel/v_row")
                    ).dtype == np.float32
  want = {k: np.asarray(v.astype(jnp.float32)) for k, v in params_lib.flatten(state.params).items()}
  got = params_lib.flatten(restore.restore_params(str(tmp_path / "run"), TINY))
  for name, value in want.items():
    assert got[name].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got[name]), value, name)
  from interop_testlib import SPM
  assert cli.main(["export-hf", "--checkpoint_dir", str(tmp_path / "run"), "--output_dir",
                   str(tmp_path / "hf"), "--spm_model", SPM]) == 0
  exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
  for name, value in want.items():
    key, transpose = hf_mapping.to_hf_name(name)
    np.testing.assert_array_equal(exported[key], value.T if transpose else value, name)


class _SumModel:
  """A stand-in for EncoderDecoderModel whose gradient is known exactly: loss = sum(w * x) over
  the microbatch's rows, so each microbatch's gradient is the sum of its rows of x."""

  @staticmethod
  def normalizer_and_weights(batch):
    return 1.0, None

  @staticmethod
  def loss_fn(params, batch, rng, normalizer):
    return jnp.sum(params["w"] * batch["x"]), {"loss": jnp.float32(0.0)}


def _accumulated(x, dtype, key):
  from xmtf_pipeline import trainer
  params = {"w": jnp.zeros(x.shape[1:], jnp.float32)}
  grads, _ = trainer.compute_gradients(_SumModel(), params, {"x": jnp.asarray(x)}, None,
                                       len(x), dtype, key)
  return np.asarray(grads["w"].astype(jnp.float32), np.float64)


def test_a_bfloat16_accumulator_with_stochastic_rounding_is_unbiased():
  """64 microbatches: one of 1.0, then 63 of 2^-10 (an eighth of a bf16 spacing at 1). A float32
  accumulator sums to 1 + 63/1024; round-to-nearest bf16 keeps 1.0 (every increment is below
  half a spacing); the stochastically rounded sum is right on average, within 6 sigma of 200
  keys (each of the 63 roundings has variance at most h^2/4, h = 2^-7 up to 2)."""
  n, keys = 64, 200
  x = np.full((n, 4), 2.0 ** -10, np.float32)
  x[0] = 1.0
  exact = 1.0 + 63 * 2.0 ** -10
  np.testing.assert_allclose(_accumulated(x, "float32", None), exact, rtol=1e-7)
  assert np.all(_accumulated(x, "bfloat16", None) == 1.0)  # round-to-nearest loses them all
  runs = np.stack([_accumulated(x, "bfloat16", jax.random.PRNGKey(k)) for k in range(keys)])
  bound = 6 * np.sqrt(n - 1) * (2.0 ** -7 / 2) / np.sqrt(keys)
  assert np.all(np.abs(runs.mean(axis=0) - exact) <= bound), np.abs(runs.mean(0) - exact) / bound
  assert len(np.unique(runs)) > 3  # it is random, and seeded: the same key gives the same sum
  np.testing.assert_array_equal(_accumulated(x, "bfloat16", jax.random.PRNGKey(3)), runs[3])


def test_a_bad_accumulator_dtype_names_the_setting():
  with pytest.raises(ValueError, match="Adafactor.accumulator_dtype must be float32 or bfloat16"):
    Adafactor(accumulator_dtype="float16")
