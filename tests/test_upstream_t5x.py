"""Upstream T5X (google-research/t5x) itself trains with gin/t5x/mt0_small_xp3.gin on our pinned
stack (jax 0.10.2, flax 0.12.8, orbax 0.12.8, seqio 0.0.20): `python -m t5x.train`, tiny model
dims, the bundled xP3 sample, a few steps, a checkpoint written.

It needs a T5X source tree, which CI cannot fetch: set XMTF_T5X_DIR to a checkout (or export) of
google-research/t5x at scripts/launch_tpu_pod.sh's T5X_COMMIT, and install the PyPI packages T5X
imports that our venv lacks:

    .venv/bin/python -m pip install --no-deps -r scripts/t5x_requirements.txt
    XMTF_T5X_DIR=$HOME/t5x .venv/bin/python -m pytest tests/test_upstream_t5x.py

Without XMTF_T5X_DIR the run is skipped. airio and jestimator come from scripts/t5x_shims/ when
the real packages do not import (scripts/t5x_shims/needed.py). The shim tests below always run.
"""

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIMS = REPO / "scripts" / "t5x_shims"
T5X_DIR = os.environ.get("XMTF_T5X_DIR", "")
PINNED = re.search(r'T5X_COMMIT="\$\{T5X_COMMIT:-([0-9a-f]{40})\}"',
                   (REPO / "scripts" / "launch_tpu_pod.sh").read_text()).group(1)
STEPS = 3
VOCAB_SIZE = 512  # the sample vocabulary has 500 ids

# Gin bindings on top of gin/t5x/mt0_small_xp3.gin: tiny dims, the bundled sample, no initial
# checkpoint, one train summary per step. The import lines make `vocab.sample_vocabulary`,
# `network` and `train_script` resolvable in the bindings (they are parsed apart from the file).
BINDINGS = [
    "from __gin__ import dynamic_registration",
    "import __main__ as train_script",
    "from t5x.examples.t5 import network",
    "from tasks import vocab",
]
FLAGS = [
    "--gin.MIXTURE_OR_TASK_NAME='xp3_sample'",
    "--gin.VOCABULARY=@vocab.sample_vocabulary()",
    "--gin.INITIAL_CHECKPOINT_PATH=None",
    f"--gin.TRAIN_STEPS={STEPS}",
    "--gin.BATCH_SIZE=4",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 32}",
    "--gin.EVAL_STEPS=1",
    "--gin.train_script.train.stats_period=1",
    f"--gin.network.T5Config.vocab_size={VOCAB_SIZE}",
    "--gin.network.T5Config.emb_dim=32",
    "--gin.network.T5Config.num_heads=2",
    "--gin.network.T5Config.head_dim=16",
    "--gin.network.T5Config.mlp_dim=64",
    "--gin.network.T5Config.num_encoder_layers=2",
    "--gin.network.T5Config.num_decoder_layers=2",
]
T5X_PYPI = ("cached_property", "fiddle", "libcst", "graphviz")  # scripts/t5x_requirements.txt


def _needed_shims(env) -> str:
  out = subprocess.run([sys.executable, str(SHIMS / "needed.py")], env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.strip()


def train_command(t5x_dir: str, model_dir: str) -> list[str]:
  return [sys.executable, "-m", "t5x.train", f"--gin_search_paths={t5x_dir},{REPO / 'gin'}",
          "--gin_file=t5x/mt0_small_xp3.gin", *[f"--gin_bindings={b}" for b in BINDINGS],
          f"--gin.MODEL_DIR='{model_dir}'", *FLAGS]


def train_losses(log: str, collection: str = "train") -> dict[int, float]:
  """{step: loss} from T5X's metric lines `[N] collection=train ... loss=X, ...`."""
  out = {}
  for m in re.finditer(rf"\[(\d+)\] collection={re.escape(collection)} (.*)", log):
    loss = re.search(r"(?:^|, )loss=([^,\s]+)", m.group(2))
    if loss:
      out[int(m.group(1))] = float(loss.group(1))
  return out


@pytest.mark.skipif(not T5X_DIR, reason=(
    "XMTF_T5X_DIR is not set: point it at a google-research/t5x source tree (commit "
    f"{PINNED[:8]}, scripts/launch_tpu_pod.sh T5X_COMMIT) to run upstream T5X's trainer on "
    "gin/t5x/mt0_small_xp3.gin; CI cannot fetch T5X (docs/upstream-t5x.md has a run)"))
def test_upstream_t5x_trains_mt0_small_recipe_on_the_sample(tmp_path):
  t5x_dir = Path(T5X_DIR).expanduser().resolve()
  assert (t5x_dir / "t5x" / "train.py").is_file(), \
      f"XMTF_T5X_DIR={T5X_DIR!r} holds no t5x/train.py: not a google-research/t5x source tree"
  missing = [m for m in T5X_PYPI if importlib.util.find_spec(m) is None]
  if missing:
    pytest.skip(f"T5X imports {', '.join(missing)}, not installed: "
                ".venv/bin/python -m pip install --no-deps -r scripts/t5x_requirements.txt")
  base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  extra = os.environ.get("PYTHONPATH", "")
  shims = _needed_shims(dict(base, PYTHONPATH=extra) if extra else base)
  path = ":".join(p for p in (str(t5x_dir), str(REPO), shims, extra) if p)
  env = dict(base, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  model_dir = tmp_path / "model"
  out = subprocess.run(train_command(str(t5x_dir), str(model_dir)), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=1200)
  log = out.stdout + out.stderr
  (tmp_path / "t5x_train.log").write_text(log)
  assert out.returncode == 0, log[-6000:]
  assert "vocabularies do not match" not in log
  losses = train_losses(log)
  assert sorted(losses) == list(range(1, STEPS + 1)), (losses, log[-3000:])
  for step, loss in losses.items():
    # about ln(512) = 6.24 plus z-loss at initialization; finite and not diverged
    assert math.isfinite(loss) and 3.0 < loss < 2 * math.log(VOCAB_SIZE), (step, loss)
  assert STEPS in train_losses(log, "training_eval/xp3_sample"), "no train_eval of the mixture"
  assert (model_dir / f"checkpoint_{STEPS}").is_dir(), sorted(p.name for p in model_dir.iterdir())
  assert (model_dir / "config.gin").is_file()


def test_train_losses_parser():
  log = ("I1127 logging_writer.py:48] [2] collection=train accuracy=0, cross_ent_loss=6.69, "
         "loss=6.70, loss_per_all_target_tokens=0.05, z_loss=0.004\n"
         "I1127 logging_writer.py:48] [2] collection=train timing/checkpoint_seconds=0.43\n"
         "I1127 logging_writer.py:48] [3] collection=training_eval/xp3_sample loss=6.72, x=1\n")
  assert train_losses(log) == {2: 6.70}
  assert train_losses(log, "training_eval/xp3_sample") == {3: 6.72}


def test_shims_cover_what_t5x_imports():
  """The shims provide the names T5X's t5x/utils.py and t5x/optimizers.py read at import time,
  and are picked only when the real package does not import."""
  code = """
import sys
import airio.core as airio
from jestimator import amos, amos_helper
assert airio.dataset_providers.get_vocabularies and airio.AirIODatasetIterator
assert issubclass(airio.Task, airio.DatasetProviderBase)
assert issubclass(airio.Mixture, airio.DatasetProviderBase)
assert not isinstance(object(), (airio.Task, airio.Mixture, airio.DatasetProviderBase))
assert amos.ScaleByAmosState._fields == ("count", "v", "b")
assert callable(amos.amos) and callable(amos_helper.state_partition_rule)
try:
  amos.amos(1e-3, eta_fn=None)
except NotImplementedError as e:
  assert "jestimator" in str(e)
else:
  raise AssertionError("the Amos shim must not pretend to work")
assert "jax" not in sys.modules  # the shims import nothing heavy
print("ok")
"""
  base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  shims = _needed_shims(base)
  listed = shims.split(":") if shims else []
  for name in ("airio", "jestimator"):
    real = subprocess.run([sys.executable, "-c", f"import {name}"], env=base,
                          capture_output=True).returncode == 0
    if not real:
      assert str(SHIMS / name) in listed, (name, shims)
  env = dict(base, PYTHONPATH=f"{SHIMS / 'airio'}:{SHIMS / 'jestimator'}")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
