"""``xmtf demo``: the main job on the embedded default, on CPU.

For now it builds the tiny mT5, runs a forward pass on a sample batch and
prints the parameter table; training, evaluation and export join as they land.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from xmtf_pipeline import gin_config, params
from xmtf_pipeline.network import Transformer


def main(model: str = "mt5_tiny") -> int:
  t0 = time.time()
  config = gin_config.load_model_config(model)
  print(f"model {model}: {params.count(config):,} parameters, compute dtype {config.dtype}")
  print(params.param_table(config))
  tree = params.init_params(config, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  enc = rng.integers(2, config.vocab_size, (2, 16)).astype(np.int32)
  tgt = rng.integers(2, config.vocab_size, (2, 8)).astype(np.int32)
  enc[:, -1] = tgt[:, -1] = 1
  dec_in = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], axis=1)
  logits = Transformer(config).apply({"params": tree}, jnp.asarray(enc), jnp.asarray(dec_in),
                                     jnp.asarray(tgt))
  logp = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.take_along_axis(logp, jnp.asarray(tgt)[..., None], axis=-1).mean()
  print(f"forward pass: logits {tuple(logits.shape)} {logits.dtype}, "
        f"cross-entropy {float(ce):.4f} (uniform would be {np.log(config.vocab_size):.4f}), "
        f"{time.time() - t0:.1f}s")
  return 0
