"""What a run shows: a progress bar, a console line per log interval, TensorBoard events.

Step statistics stay on the device until a flush, so the loop never waits on
the host between steps. Only process 0 writes summaries.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from xmtf_pipeline import models


class RunLogger:
  def __init__(self, model_dir: str, total_steps: int, start_step: int, batch_size: int,
               log_period: int, progress_bar: bool = True):
    self.batch_size = batch_size
    self.log_period = log_period
    self._pending: list[dict[str, Any]] = []  # device arrays, one dict per step
    self._fetched: list[dict[str, Any]] = []  # fetched by a pre-save check, not yet logged
    self._t_last = time.time()
    self._steps_since = 0
    self._is_chief = jax.process_index() == 0
    self._writers: dict[str, Any] = {}
    self._model_dir = model_dir
    self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                     disable=not (progress_bar and self._is_chief), mininterval=1.0)

  def _writer(self, name: str):
    if name not in self._writers:
      from clu import metric_writers  # TensorBoard event files (tf.summary underneath)
      self._writers[name] = metric_writers.SummaryWriter(os.path.join(self._model_dir, name))
    return self._writers[name]

  def record(self, stats: dict[str, Any]) -> None:
    self._pending.append(stats)
    self._steps_since += 1
    self._bar.update(1)

  def flush(self, step: int, write: bool = True) -> dict[str, float]:
    if not self._pending and not self._fetched:
      return {}
    fetched = jax.device_get(self._pending)
    self._pending = []
    nonfinite = int(sum(np.asarray(s["nonfinite"]).item() for s in fetched))
    if not write:
      # A pre-save check only: keep what was fetched for the next console line.
      self._fetched += fetched
      return {"nonfinite": nonfinite}
    fetched, self._fetched = self._fetched + fetched, []
    n = len(fetched)
    totals = {k: sum(np.asarray(s[k], np.float64) for s in fetched)
              for k in fetched[0] if k not in ("nonfinite", "learning_rate")}
    metrics = models.metrics_from_stats(totals)
    metrics["loss"] /= n  # mean over steps of the per-step normalized loss
    metrics["cross_ent_loss"] /= n
    metrics["z_loss"] /= n
    metrics["learning_rate"] = float(np.asarray(fetched[-1]["learning_rate"]))
    elapsed = max(time.time() - self._t_last, 1e-9)
    metrics["timing/steps_per_second"] = self._steps_since / elapsed
    metrics["timing/seqs_per_second"] = self._steps_since * self.batch_size / elapsed
    metrics["nonfinite"] = nonfinite
    self._t_last, self._steps_since = time.time(), 0
    if self._is_chief:
      self._writer("train").write_scalars(step, {k: v for k, v in metrics.items()
                                                 if k != "nonfinite"})
      self._writer("train").flush()
      self._bar.set_postfix(loss=f"{metrics['loss']:.4f}",
                            ex_s=f"{metrics['timing/seqs_per_second']:.1f}")
      tqdm.write(f"step {step}: loss {metrics['loss']:.4f}  accuracy {metrics['accuracy']:.4f}  "
                 f"lr {metrics['learning_rate']:.2e}  "
                 f"{metrics['timing/seqs_per_second']:.1f} examples/s")
    return metrics

  def write_eval(self, step: int, metrics: dict[str, float]) -> None:
    if not self._is_chief:
      return
    self._writer("train_eval").write_scalars(step, metrics)
    self._writer("train_eval").flush()
    tqdm.write(f"step {step}: train_eval loss {metrics['loss']:.4f}  "
               f"accuracy {metrics['accuracy']:.4f}")

  def write_validation(self, step: int, score: float) -> None:
    """Rank-classification validation score (median accuracy over the suite's prompts)."""
    if not self._is_chief:
      return
    self._writer("validation").write_scalars(step, {"score": score})
    self._writer("validation").flush()
    tqdm.write(f"step {step}: validation score {score:.4f}")

  def close(self) -> None:
    self._bar.close()
    for w in self._writers.values():
      w.close()
