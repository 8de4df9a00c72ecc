"""Shared helpers of the eval tests: tiny random models, the sample vocabulary, HF references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from xmtf_pipeline import decoding
from xmtf_pipeline import params as params_lib
from xmtf_pipeline.network import T5Config

# The bundled sample SentencePiece model has 400 pieces + 100 sentinels = 500 ids.
SAMPLE_VOCAB_CONFIG = T5Config(vocab_size=512, emb_dim=32, num_heads=4, num_encoder_layers=2,
                               num_decoder_layers=2, head_dim=8, mlp_dim=48, dtype="float32")


def random_params(config: T5Config, seed: int = 0, logit_scale: float = 1.0):
  """Our init with non-trivial norm scales and relpos tables (as test_network_parity), the
  output projection optionally scaled up to make the next-token distributions peakier."""
  tree = jax.jit(params_lib.init_params, static_argnums=0)(config, jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  flat = {}
  for path, v in params_lib.flatten(tree).items():
    v = np.asarray(v)
    if path.endswith("/scale"):
      v = 1.0 + 0.2 * rng.standard_normal(v.shape).astype(np.float32)
    elif path.endswith("rel_embedding"):
      v = rng.standard_normal(v.shape).astype(np.float32)
    elif path == "decoder/logits_dense/kernel":
      v = v * logit_scale
    flat[path] = jnp.asarray(v)
  return params_lib.unflatten(flat)


def greedy(module, tree, enc, max_length, eos_id=1, forbid_pad=False):
  return jax.jit(decoding.greedy_decode, static_argnums=(0, 3, 4, 5))(
      module, tree, jnp.asarray(enc), max_length, eos_id, forbid_pad)


def sample_vocabulary():
  from tasks import vocab
  return vocab.sample_vocabulary()


def write_checkpoints(model_dir, config: T5Config, steps=(10,), seeds=None) -> None:
  """Our orbax checkpoints (params + zero Adafactor state) of random models, one per step."""
  from xmtf_pipeline import checkpoints
  from xmtf_pipeline.adafactor import Adafactor
  from xmtf_pipeline.trainer import TrainState

  ckpt = checkpoints.Checkpointer(str(model_dir))
  for step, seed in zip(steps, seeds or steps):
    state = TrainState.create(random_params(config, seed=seed), Adafactor()).state_dict()
    ckpt.save(step, state, {"batches": 0, "random_seed": 0, "data_seed": 0})
  ckpt.close()


def spm_binding() -> str:
  from tasks import vocab
  return f'--gin.tasks.vocab.mt5_vocabulary_config.path="{vocab.SAMPLE_SPM}"'
