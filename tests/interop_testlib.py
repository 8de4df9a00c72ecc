"""Shared fixtures of the checkpoint-interop tests (HF export/import, T5X import)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from xmtf_pipeline import checkpoints
from xmtf_pipeline import params as params_lib
from xmtf_pipeline.adafactor import Adafactor
from xmtf_pipeline.network import T5Config, Transformer

# mt5_tiny's shape (vocab 512 fits the sample SentencePiece model: 400 pieces + 100 sentinels).
TINY = T5Config(vocab_size=512, emb_dim=64, num_heads=4, num_encoder_layers=2,
                num_decoder_layers=2, head_dim=16, mlp_dim=128, dtype="float32")
# One more decoder than encoder layer, so that a num_layers / num_decoder_layers mix-up shows.
# (transformers 5.24's generate() sizes its cache by num_layers and fails on such models, so
# generation tests use TINY.)
UNEVEN = TINY.replace(num_decoder_layers=3, layer_norm_epsilon=1e-5, relpos_max_distance=64)
# tasks.vocab.SAMPLE_SPM, without importing TensorFlow through tasks/.
SPM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tasks", "data",
                   "spm", "xp3_sample.model")


def random_params(config: T5Config, seed: int = 0) -> dict:
  """Our init, with norm scales, relpos tables and the head made non-trivial, so that a
  mis-mapped or un-transposed tensor changes the logits visibly."""
  tree = params_lib.init_params(config, jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  flat = {}
  for path, v in params_lib.flatten(tree).items():
    v = np.asarray(v, np.float32)
    if path.endswith("/scale"):
      v = 1.0 + 0.2 * rng.standard_normal(v.shape).astype(np.float32)
    elif path.endswith("rel_embedding"):
      v = rng.standard_normal(v.shape).astype(np.float32)
    elif path == "decoder/logits_dense/kernel":
      v = v * 8.0  # decisive argmaxes: greedy comparisons are not decided by 1e-7 noise
    flat[path] = v
  return params_lib.unflatten(flat)


def random_opt_state(params: dict, step: int, seed: int = 1) -> dict:
  """A non-zero Adafactor state in our (= T5X's) layout, so round trips are meaningful."""
  rng = np.random.default_rng(seed)
  zeros = Adafactor().init(params)

  def fill(x):
    x = np.asarray(x)
    return x if x.shape == (1,) else rng.random(x.shape, dtype=np.float32)

  return {"step": np.asarray(step, np.int32),
          "param_states": jax.tree_util.tree_map(fill, zeros["param_states"])}


def operative_config(config: T5Config, extra: dict[str, str] | None = None) -> str:
  """A config.gin as ``xmtf train`` writes it (only the parts export reads)."""
  lines = ["from __gin__ import dynamic_registration", "from xmtf_pipeline import network", "",
           "# Macros:", "DROPOUT_RATE = 0.1", "MODEL_CONFIG = @network.T5Config()",
           "MIXTURE_OR_TASK_NAME = 'xp3_sample'", "BATCH_SIZE = 8", "TRAIN_STEPS = 7",
           "LOSS_NORMALIZING_FACTOR = 'AVERAGE_PER_SEQUENCE'",
           f"NUM_EMBEDDINGS = {config.vocab_size}", "",
           f"tasks.vocab.mt5_vocabulary_config.path = {SPM!r}",
           "tasks.vocab.mt5_vocabulary_config.extra_ids = 100",
           "schedules.create_learning_rate_scheduler.base_learning_rate = 0.001",
           "MODEL_CONFIG/network.T5Config.dropout_rate = %DROPOUT_RATE",
           "MODEL_CONFIG/network.T5Config.vocab_size = %NUM_EMBEDDINGS"]
  for name in ("emb_dim", "num_heads", "num_encoder_layers", "num_decoder_layers", "head_dim",
               "mlp_dim", "dtype", "relpos_num_buckets", "relpos_max_distance",
               "layer_norm_epsilon"):
    value = getattr(config, name)
    lines.append(f"MODEL_CONFIG/network.T5Config.{name} = \\\n    {value!r}")
  lines += [f"{k} = {v}" for k, v in (extra or {}).items()]
  return "\n".join(lines) + "\n"


def save_our_checkpoint(model_dir: str, config: T5Config = TINY, step: int = 7, seed: int = 0,
                        write_config: bool = True) -> tuple[str, dict, dict]:
  """MODEL_DIR/checkpoint_<step> via the trainer's Checkpointer, plus config.gin.

  Returns (checkpoint dir, params, optimizer state).
  """
  params = random_params(config, seed)
  opt = random_opt_state(params, step, seed + 1)
  ckpt = checkpoints.Checkpointer(model_dir)
  ckpt.save(step, {"target": params, "state": opt}, {"batches": 3, "random_seed": 0,
                                                      "data_seed": 0})
  ckpt.close()
  if write_config:
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(operative_config(config))
  return os.path.join(model_dir, f"checkpoint_{step}"), params, opt


def export_our_checkpoint(root) -> tuple[str, dict, object]:
  """A saved checkpoint under root/run and its `xmtf export-hf` folder root/hf.

  Returns (checkpoint dir, params, export folder).
  """
  from xmtf_pipeline import cli  # the CLI imports every job: only the tests that export pay for it
  ckpt, tree, _ = save_our_checkpoint(str(root / "run"))
  out = root / "hf"
  assert cli.main(["export-hf", "--checkpoint_dir", ckpt, "--output_dir", str(out)]) == 0
  return ckpt, tree, out


def train_target(config: T5Config = TINY, seed: int = 5) -> dict:
  """What the trainer passes to restore_state: a fresh state's state_dict()."""
  params = params_lib.init_params(config, jax.random.PRNGKey(seed))
  return {"target": params, "state": Adafactor().init(params)}


def shift_right(targets: np.ndarray) -> np.ndarray:
  return np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)


def padded_batch(vocab: int, lengths_in=(10, 4, 7), lengths_out=(8, 3, 5), seed: int = 1):
  rng = np.random.default_rng(seed)
  enc = np.zeros((len(lengths_in), max(lengths_in)), np.int32)
  tgt = np.zeros((len(lengths_out), max(lengths_out)), np.int32)
  for i, (a, b) in enumerate(zip(lengths_in, lengths_out)):
    enc[i, :a] = rng.integers(3, vocab, a)
    enc[i, a - 1] = 1
    tgt[i, :b] = rng.integers(3, vocab, b)
    tgt[i, b - 1] = 1
  return enc, tgt


def our_logits(config: T5Config, params, enc: np.ndarray, tgt: np.ndarray) -> np.ndarray:
  return np.asarray(Transformer(config).apply(
      {"params": params}, jnp.asarray(enc), jnp.asarray(shift_right(tgt)), jnp.asarray(tgt)))


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def assert_trees_bitwise_equal(a, b) -> None:
  fa, fb = params_lib.flatten(a), params_lib.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    x, y = np.asarray(fa[k]), np.asarray(fb[k])
    assert x.shape == y.shape and x.dtype == y.dtype, k
    assert x.tobytes() == y.tobytes(), f"{k} differs"


def read_json(path: str):
  with open(path) as f:
    return json.load(f)
