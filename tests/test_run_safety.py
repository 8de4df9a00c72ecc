"""Runs that must not be lost (issue 25): one trainer per MODEL_DIR, no non-finite checkpoint,
a save before stopping on a data error, a full disk in one line, fixes that work as printed."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import micro_model
import numpy as np
import pytest
from test_train_runs import REPO, _flags, _spawn, _wait_for

from xmtf_pipeline import checkpoints, params
from xmtf_pipeline import train as train_lib
from xmtf_pipeline.adafactor import Adafactor
from xmtf_pipeline.trainer import TrainState

SAMPLE = REPO / "tasks" / "data" / "xp3_sample" / "en" / "merged_en.jsonl"
SPM = REPO / "tasks" / "data" / "spm" / "xp3_sample.model"


def _listing(model_dir: Path) -> dict[str, float]:
  """Every file under MODEL_DIR with its modification time (what a second trainer must not touch)."""
  return {str(p.relative_to(model_dir)): p.stat().st_mtime_ns for p in model_dir.rglob("*")
          if p.is_file() and p.name != ".xmtf-train.lock"}


def test_a_second_trainer_on_the_same_model_dir_refuses_before_writing(tmp_path, capsys):
  model_dir = tmp_path / "run"
  first = _spawn(model_dir, 100_000, SAVE_PERIOD=5)
  try:
    _wait_for(model_dir / "checkpoint_5", first)
    before = _listing(model_dir)
    assert train_lib.main(_flags(model_dir, 12, RANDOM_SEED=8)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"pid {first.pid} on host" in err and "in use by another xmtf train" in err, err
    assert "started 20" in err, err  # the holder's start time (ISO date)
    after = _listing(model_dir)
    # Nothing rewritten (the first run's own event file grows, so only its name is compared),
    # nothing added but the first run's new checkpoints.
    assert {k: v for k, v in after.items() if k in before and not k.startswith("train/")} == {
        k: v for k, v in before.items() if not k.startswith("train/")}
    assert ({k for k in after if k.startswith("train/")}
            == {k for k in before if k.startswith("train/")})
    assert not [k for k in after if k not in before and not k.startswith("checkpoint_")]
  finally:
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=120)
  assert first.returncode == 0, out
  # The first run's own output when logging to a file (a pipe here): a start line, each save,
  # and no progress-bar redraws.
  assert "Training from scratch to step 100000 on 'synthetic_copy'" in out, out
  assert "mesh data=1 model=1 on 1 device, 1 process" in out and str(model_dir) in out, out
  assert "saved checkpoint_5 in" in out and "\r" not in out, out
  step = int(out.split("SIGTERM: saved checkpoint_")[1].split()[0])
  # Its checkpoints are its own: they restore, and the last one is where it stopped.
  ckpt = checkpoints.Checkpointer(str(model_dir))
  assert ckpt.steps()[-1] == step
  ckpt.close()


def test_a_kill_9d_trainer_does_not_block_the_restart(tmp_path, capsys):
  model_dir = tmp_path / "run"
  run = _spawn(model_dir, 100_000, SAVE_PERIOD=5)
  _wait_for(model_dir / "checkpoint_5", run)
  run.send_signal(signal.SIGKILL)
  run.communicate(timeout=60)
  lock_text = (model_dir / ".xmtf-train.lock").read_text()
  assert f'"pid": {run.pid}' in lock_text  # the stale file is still there; its lock is not
  capsys.readouterr()
  assert train_lib.main(_flags(model_dir, 12)) == 0
  out = capsys.readouterr().out
  assert "Restored checkpoint_" in out and "Done:" in out, out


def test_the_lock_is_taken_by_process_0_only_and_agreed_by_all(tmp_path):
  from xmtf_pipeline.run_lock import RunLock, RunLockError
  with RunLock(str(tmp_path), is_chief=True):
    # Another job's process 0 fails; its other processes learn that from process 0's answer.
    with pytest.raises(RunLockError, match="in use by another xmtf train"):
      RunLock(str(tmp_path), is_chief=True).__enter__()
    with pytest.raises(RunLockError, match="process 0 names it"):
      RunLock(str(tmp_path), is_chief=False, agree=lambda ok: False).__enter__()
    # A non-chief process of the holding job does not lock at all.
    with RunLock(str(tmp_path), is_chief=False, agree=lambda ok: True):
      pass
  with RunLock(str(tmp_path), is_chief=True):  # released on exit
    pass


def _nan_run_flags(model_dir, steps, lr):
  return _flags(model_dir, steps, SAVE_PERIOD=2, LOG_PERIOD=2, DROPOUT_RATE=0.0) + [
      f"--gin.schedules.create_learning_rate_scheduler.base_learning_rate={lr}"]


def test_a_nan_update_right_before_a_save_writes_no_checkpoint(tmp_path, capsys):
  model_dir = tmp_path / "run"
  assert train_lib.main(_nan_run_flags(model_dir, 2, 1e-3)) == 0
  capsys.readouterr()
  # Learning rate 1e9: the update of step 4 overflows the parameters; its loss (computed
  # before that update) is still finite, so only a check of the state itself can catch it.
  assert train_lib.main(_nan_run_flags(model_dir, 4, 1e9)) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert "stopping without saving: checkpoint_2 is the newest checkpoint" in err, err
  assert "The train state became NaN/Inf at or before step 4 (first in target/" in err, err
  assert sorted(p.name for p in model_dir.glob("checkpoint_*")) == ["checkpoint_2"]


def _write_nan_checkpoint(model_dir: Path, step: int) -> str:
  """A copy of the newest checkpoint saved as ``checkpoint_<step>`` with one NaN parameter."""
  config = micro_model.config()
  like = TrainState.create(params.init_params(config, jax.random.PRNGKey(0)),
                           Adafactor()).state_dict()
  ckpt = checkpoints.Checkpointer(str(model_dir))
  _, state, data = ckpt.restore_latest(like)
  flat = params.flatten(state["target"])
  name = sorted(flat)[3]
  flat[name] = np.asarray(flat[name]).copy()
  flat[name].reshape(-1)[0] = np.nan
  state["target"] = params.unflatten(flat)
  ckpt.save(step, state, data)
  ckpt.close()
  return name


def test_a_restart_refuses_a_nan_checkpoint_naming_the_array_and_the_last_finite(tmp_path,
                                                                                  capsys):
  model_dir = tmp_path / "run"
  assert train_lib.main(_flags(model_dir, 5)) == 0
  name = _write_nan_checkpoint(model_dir, 10)
  capsys.readouterr()
  assert train_lib.main(_flags(model_dir, 15)) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert f"checkpoint_10 holds NaN/Inf values (first in target/{name})" in err, err
  assert f"last finite checkpoint {model_dir / 'checkpoint_5'}" in err, err
  assert sorted(p.name for p in model_dir.glob("checkpoint_*")) == ["checkpoint_10",
                                                                      "checkpoint_5"]


def _xp3_env(tmp_path, lines):
  root = tmp_path / "xp3"
  (root / "en").mkdir(parents=True)
  (root / "en" / "merged_en.jsonl").write_text("".join(lines))
  return dict(os.environ, XP3_DIR=str(root), MT5_SPM_PATH=str(SPM), PYTHONPATH=str(REPO),
              TF_CPP_MIN_LOG_LEVEL="3")


def _xp3_flags(model_dir, steps=400):
  return ["--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin", *micro_model.GIN_FLAGS,
          f'--gin.MODEL_DIR="{model_dir}"', '--gin.MIXTURE_OR_TASK_NAME="xp3_en"',
          '--gin.MIXTURE_OR_TASK_MODULE="tasks.xp3"',
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", f"--gin.TRAIN_STEPS={steps}",
          "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.BATCH_SIZE=8", "--gin.DROPOUT_RATE=0.0",
          "--gin.EVAL_PERIOD=0", "--gin.SAVE_PERIOD=1000", "--gin.LOG_PERIOD=1000",
          "--gin.PACK=False"]


def _run_cli(args, env, timeout=300):
  return subprocess.run([sys.executable, "-m", "xmtf_pipeline.cli", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_a_data_error_mid_run_saves_first_and_the_printed_fix_runs(tmp_path):
  # The sample's 334 lines 40 times over, a malformed line near the end: the input pipeline
  # (parsing, shuffling and prefetching read about 10,000 lines ahead) reaches it after some steps.
  lines = SAMPLE.read_text().splitlines(keepends=True) * 40
  lines[-20] = '{"inputs": "broken\n'
  env = _xp3_env(tmp_path, lines)
  model_dir = tmp_path / "run"
  out = _run_cli(["train", *_xp3_flags(model_dir)], env)
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  saved = sorted(p.name for p in model_dir.glob("checkpoint_*"))
  assert len(saved) == 1, (saved, out.stderr[-3000:])
  step = int(saved[0].split("_")[1])
  assert 0 < step < 400
  assert f"Stopping at step {step}: saved checkpoint_{step} first" in out.stderr, out.stderr
  error = [line for line in out.stderr.splitlines() if "error:" in line]
  assert len(error) == 1 and "malformed JSON" in error[0], out.stderr
  # The message's own suggestion, taken from it and run as printed: the run continues.
  binding = error[0].split("`")[1]
  assert binding == "tasks.sources.skip_malformed_records.skip = True", error[0]
  out = _run_cli(["train", *_xp3_flags(model_dir, step + 4), f"--gin_bindings={binding}"], env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"Restored checkpoint_{step}" in out.stdout and "Done:" in out.stdout, out.stdout


def test_the_documented_ablation_binding_resolves_as_printed(tmp_path, monkeypatch):
  """docs/data.md's ablation line, with the import it says to add, gives a mixture name."""
  from xmtf_pipeline import gin_config
  readme = (REPO / "docs" / "data.md").read_text()
  assert "--gin_bindings='import tasks.xp3'" in readme
  assert "--gin.MIXTURE_OR_TASK_NAME=@tasks.mixtures.xp3_ablation()" in readme
  monkeypatch.setenv("XP3_DIR", str(REPO / "tasks" / "data" / "xp3_sample"))
  gin_config.parse(["models/mt5_tiny.gin", "runs/finetune.gin"],
                   ["import tasks.xp3", "MIXTURE_OR_TASK_NAME = @tasks.mixtures.xp3_ablation()",
                    "tasks.mixtures.xp3_ablation.languages = ['en', 'fr']"], finalize=False)
  assert gin_config.evaluate("%MIXTURE_OR_TASK_NAME") == "xp3_ablation"


def test_an_unquoted_gin_string_says_how_to_quote_it(capsys):
  assert train_lib.main(["--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin",
                         "--gin.MIXTURE_OR_TASK_NAME=xp3_sample"]) == 2
  err = capsys.readouterr().err
  assert "ast." not in err and "object at 0x" not in err, err
  assert '--gin.MIXTURE_OR_TASK_NAME=\\"xp3_sample\\"' in err, err


@pytest.fixture
def small_disk(tmp_path):
  """A 3 MiB tmpfs (root only: CI and this machine run as root)."""
  mount = tmp_path / "disk"
  mount.mkdir()
  got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                       capture_output=True, text=True)
  if got.returncode:
    pytest.skip(f"cannot mount a small tmpfs here: {got.stderr.strip()}")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_saving_is_one_line_naming_the_last_checkpoint(small_disk, tmp_path):
  model_dir = small_disk / "run"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
  first = subprocess.run([sys.executable, "-m", "xmtf_pipeline.train", *_flags(model_dir, 5)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-3000:]
  # Leave about 100 KiB: less than a checkpoint of the micro model (about 2 MiB with Adafactor).
  free = shutil.disk_usage(small_disk).free
  (small_disk / "filler").write_bytes(b"\0" * max(free - 100 * 1024, 0))
  out = subprocess.run([sys.executable, "-m", "xmtf_pipeline.train", *_flags(model_dir, 10)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  lines = [line for line in out.stderr.splitlines() if line.strip()
           and not line.startswith(("WARNING:absl", "W0000", "I0000", "WARNING: All log"))]
  assert len(lines) == 1, out.stderr[-5000:]
  assert "Disk full: checkpoint_10 needs about" in lines[0] and "is free" in lines[0], lines[0]
  assert "checkpoint_5 is the newest checkpoint" in lines[0], lines[0]
  assert (model_dir / "checkpoint_5").is_dir() and not (model_dir / "checkpoint_10").exists()


def test_the_demo_does_not_clear_its_folder_while_a_run_holds_it(tmp_path):
  from xmtf_pipeline.run_lock import RunLock
  from xmtf_pipeline.tools import demo
  model_dir = tmp_path / "demo"
  model_dir.mkdir()
  (model_dir / demo.MARKER).touch()
  (model_dir / "checkpoint_5").mkdir()
  with RunLock(str(model_dir)):
    with pytest.raises(SystemExit, match="is in use by another run"):
      demo._fresh_dir(str(model_dir))
    assert (model_dir / "checkpoint_5").is_dir()
  demo._fresh_dir(str(model_dir))  # once the run is gone, the demo's own folder is recreated
  assert not (model_dir / "checkpoint_5").exists()
