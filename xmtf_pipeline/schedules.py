"""T5X's learning-rate schedules, written as factor strings ('constant * rsqrt_decay')."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

FACTORS = ("constant", "linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay", "decay_every",
           "cosine_decay", "linear_decay")


def create_learning_rate_scheduler(factors: str = "constant * linear_warmup * rsqrt_decay",
                                   base_learning_rate: float = 0.5, warmup_steps: int = 1000,
                                   decay_factor: float = 0.5, steps_per_decay: int = 20000,
                                   steps_per_cycle: int = 100000, step_offset: int = 0,
                                   min_learning_rate: float = 1e-8) -> Callable:
  """Returns ``step -> learning rate``, evaluated on the global step (T5X semantics).

  The product of the factors, with the step shifted by ``step_offset`` and floored
  at 0, and the result floored at ``min_learning_rate``.
  """
  names = [n.strip() for n in factors.split("*")]
  unknown = [n for n in names if n not in FACTORS]
  if unknown:
    raise ValueError(f"Unknown learning-rate factor(s) {unknown} in {factors!r}; "
                     f"choose from {', '.join(FACTORS)}.")

  def step_fn(step):
    step = jnp.maximum(0, jnp.asarray(step, jnp.float32) - step_offset)
    ret = jnp.asarray(1.0, jnp.float32)
    for name in names:
      if name == "constant":
        ret *= base_learning_rate
      elif name == "linear_warmup":
        ret *= jnp.minimum(1.0, step / warmup_steps)
      elif name == "rsqrt_decay":
        ret /= jnp.sqrt(jnp.maximum(step, warmup_steps))
      elif name == "rsqrt_normalized_decay":
        ret *= jnp.sqrt(float(warmup_steps))
        ret /= jnp.sqrt(jnp.maximum(step, warmup_steps))
      elif name == "decay_every":
        ret *= decay_factor ** (step // steps_per_decay)
      elif name == "cosine_decay":
        progress = jnp.maximum(0.0, (step - warmup_steps) / float(steps_per_cycle))
        ret *= jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * (progress % 1.0))))
      elif name == "linear_decay":
        progress = jnp.maximum(0.0, (step - warmup_steps) / float(steps_per_cycle))
        ret *= 1.0 - (progress % 1.0)
    return jnp.maximum(ret, min_learning_rate).astype(jnp.float32)

  return step_fn
