"""What the benchmarks run: model sizes, synthetic batches, the analytic FLOP count, a matmul ceiling.

Shared by ``bench`` (the train-step table), ``bench_checks``, ``bench_embed`` and
``bench_packing``; imports neither TensorFlow, seqio nor gin.
"""

from __future__ import annotations

import time

import numpy as np

SIZES = {  # emb, heads, layers, mlp (gin/models/mt5_*.gin; duplicated to avoid gin here)
    "mt5_small": (512, 6, 8, 1024), "mt5_base": (768, 12, 12, 2048),
    "mt5_large": (1024, 16, 24, 2816), "mt5_xl": (2048, 32, 24, 5120),
    "mt5_xxl": (4096, 64, 24, 10240), "mt5_tiny": (64, 4, 2, 128),
}


def model_config(name: str, dtype: str = "bfloat16", dropout: float = 0.1, **overrides):
  from xmtf_pipeline.network import T5Config
  d, h, n, f = SIZES[name]
  vocab = 512 if name == "mt5_tiny" else 250112
  head_dim = 16 if name == "mt5_tiny" else 64
  return T5Config(vocab_size=vocab, emb_dim=d, num_heads=h, num_encoder_layers=n,
                  num_decoder_layers=n, head_dim=head_dim, mlp_dim=f, dropout_rate=dropout,
                  dtype=dtype, **overrides)


def train_flops_per_example(cfg, len_in: int, len_out: int) -> float:
  d, i, f, V = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  enc = 8 * len_in * d * i + 4 * len_in * len_in * i + 6 * len_in * d * f
  dec = (8 * len_out * d * i + 4 * len_out * len_out * i          # self-attention
         + 4 * len_out * d * i + 4 * len_in * d * i               # cross q,o and k,v
         + 4 * len_out * len_in * i + 6 * len_out * d * f)        # cross scores, MLP
  head = 2 * len_out * d * V
  return 3.0 * (cfg.num_encoder_layers * enc + cfg.num_decoder_layers * dec + head)


def matmul_ceiling_tflops(n: int | None = None, reps: int = 10) -> float:
  """bf16 n x n matmuls per second; n = 8192 on accelerators, 1024 on a CPU (seconds, not
  minutes: a CPU figure only makes the table complete)."""
  import jax
  import jax.numpy as jnp
  n = n or (1024 if jax.default_backend() == "cpu" else 8192)
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
  f = jax.jit(lambda x, y: x @ y)
  for _ in range(3):
    f(a, b).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    out = f(a, b)
  out.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def synthetic_batch(batch: int, len_in: int, len_out: int, vocab: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab, (batch, len_in)).astype(np.int32)
  tgt = rng.integers(2, vocab, (batch, len_out)).astype(np.int32)
  enc[:, -1] = tgt[:, -1] = 1
  dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], 1)
  return {"encoder_input_tokens": enc, "decoder_target_tokens": tgt, "decoder_input_tokens": dec,
          "decoder_loss_weights": np.ones_like(tgt, np.float32)}


# mT0's rows (xP3, unpacked): real lengths about 300 of 1024 input and 60 of 256 target
# tokens on average, the rest padding. Lengths are log-normal (sigma below, an
# assumption: xP3's are long-tailed), truncated at the row length as seqio trims, with
# the mean after truncation matched to these fractions of the row.
MT0_MEAN_FRACTION = {"inputs": 300 / 1024, "targets": 60 / 256}
MT0_SIGMA = 1.0


def _lognormal_lengths(rng, n: int, length: int, mean: float) -> np.ndarray:
  z = rng.standard_normal(n)
  grid = np.random.default_rng(12345).standard_normal(4096)  # fixed: same mu every call
  lo, hi = -5.0, np.log(length) + 5.0
  for _ in range(60):  # bisect mu so the truncated mean is `mean`
    mu = (lo + hi) / 2
    if np.mean(np.clip(np.exp(mu + MT0_SIGMA * grid), 1, length)) < mean:
      lo = mu
    else:
      hi = mu
  return np.clip(np.rint(np.exp(mu + MT0_SIGMA * z)), 2, length).astype(int)


def mt0_like_batch(batch: int, len_in: int, len_out: int, vocab: int, seed: int = 0):
  """Unpacked rows shaped like mT0's: real tokens then padding (id 0), EOS at each end."""
  b = synthetic_batch(batch, len_in, len_out, vocab, seed)
  rng = np.random.default_rng(seed + 1)
  enc, tgt = b["encoder_input_tokens"], b["decoder_target_tokens"]
  for tokens, length, key in ((enc, len_in, "inputs"), (tgt, len_out, "targets")):
    for row, n in enumerate(_lognormal_lengths(rng, batch, length,
                                               MT0_MEAN_FRACTION[key] * length)):
      tokens[row, n - 1] = 1
      tokens[row, n:] = 0
  dec = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], 1)
  return {"encoder_input_tokens": enc, "decoder_target_tokens": tgt, "decoder_input_tokens": dec,
          "decoder_loss_weights": (tgt > 0).astype(np.float32)}


DATA = {"full": synthetic_batch, "mt0": mt0_like_batch}
