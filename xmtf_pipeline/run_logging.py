"""What a run shows: a progress bar, a console line per log interval, TensorBoard events.

Step statistics stay on the device until a flush, so the loop never waits on
the host between steps. Only process 0 writes summaries.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from xmtf_pipeline import gin_config, models


def _is_terminal(stream) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    return False


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
    # The bar redraws with '\r': in a log file that is one endless line, so it shows on a
    # terminal only; the console lines (tqdm.write) print either way.
    self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                     disable=not (progress_bar and self._is_chief and _is_terminal(sys.stderr)),
                     mininterval=1.0)

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

  def write_line(self, text: str) -> None:
    """A line on stdout that does not break the progress bar."""
    tqdm.write(text)
    sys.stdout.flush()

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


# --------------------------------------------------------------------------- run configs
# Every start's operative config is kept: ``config.gin`` is the first start's (what
# ``xmtf export-hf`` and ``select-checkpoint`` read the architecture from, which a
# restart cannot change), and a later start whose config differs from the last one
# recorded adds ``config-<step>.gin``, <step> being the step it continued from
# (``config-<step>.<n>.gin`` for another differing start at the same step).

_CONFIG_NAME = re.compile(r"config-(\d+)(?:\.(\d+))?\.gin")


def config_files(model_dir: str) -> list[str]:
  """The run's recorded configs, oldest first: config.gin, then config-<step>[.<n>].gin."""
  try:
    names = os.listdir(model_dir)
  except OSError:
    return []
  later = sorted(((int(m[1]), int(m[2] or 1)), n) for n in names
                 if (m := _CONFIG_NAME.fullmatch(n)))
  first = ["config.gin"] if "config.gin" in names else []
  return [os.path.join(model_dir, n) for n in first + [n for _, n in later]]


def config_changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
  lines = []
  for key in sorted(set(old) | set(new)):
    if key in old and key in new and old[key] == new[key]:
      continue
    if key not in old:
      lines.append(f"+ {key} = {new[key]}" if new[key] else f"+ {key}")
    elif key not in new:
      lines.append(f"- {key} = {old[key]}" if old[key] else f"- {key}")
    else:
      lines.append(f"  {key}: {old[key]} -> {new[key]}")
  return lines


def record_config(model_dir: str, text: str, step: int) -> str | None:
  """Keeps this start's operative config; returns a message when it differs from the last.

  The first start writes ``config.gin``; a later start writes
  ``config-<step>.gin`` only when its bindings differ from the newest recorded
  config, and the message lists what changed.
  """
  recorded = config_files(model_dir)
  if not recorded:
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(text)
    return None
  with open(recorded[-1]) as f:
    changes = config_changes(gin_config.operative_statements(f.read()),
                             gin_config.operative_statements(text))
  if not changes:
    return None
  path, n = os.path.join(model_dir, f"config-{step}.gin"), 1
  while os.path.exists(path):
    n += 1
    path = os.path.join(model_dir, f"config-{step}.{n}.gin")
  with open(path, "w") as f:
    f.write(text)
  return (f"config: this start (from step {step}) differs from the last recorded config "
          f"{os.path.basename(recorded[-1])}; kept it as {os.path.basename(path)} "
          f"(config.gin stays the first start's):\n" + "\n".join(changes))
