"""Whole runs of `xmtf train`: kill -9 and resume, SIGTERM, bad input, gin files."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import micro_model
import numpy as np
import pytest

from xmtf_pipeline import checkpoints, gin_config, params
from xmtf_pipeline import train as train_lib

REPO = Path(__file__).resolve().parent.parent


def _flags(model_dir, steps=30, **overrides):
  macros = {
      "MODEL_DIR": f'"{model_dir}"',
      "MIXTURE_OR_TASK_NAME": '"synthetic_copy"',
      "MIXTURE_OR_TASK_MODULE": '"tasks.synthetic"',
      "TASK_FEATURE_LENGTHS": "{'inputs': 16, 'targets': 8}",
      "TRAIN_STEPS": str(steps),
      "INITIAL_CHECKPOINT_PATH": "None",
      "BATCH_SIZE": "16",
      "DROPOUT_RATE": "0.1",  # dropout on: resume must replay the same RNG too
      "RANDOM_SEED": "7",
      "LOG_PERIOD": "5",
      "SAVE_PERIOD": "5",
      "EVAL_PERIOD": "0",
  }
  macros.update({k: str(v) for k, v in overrides.items()})
  return (["--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin", *micro_model.GIN_FLAGS]
          + [f"--gin.{k}={v}" for k, v in macros.items() if v != "UNSET"])


def _spawn(model_dir, steps, **overrides):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
  return subprocess.Popen([sys.executable, "-m", "xmtf_pipeline.train",
                           *_flags(model_dir, steps, **overrides)],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _final_params(model_dir, step):
  config = micro_model.config()
  target = params.init_params(config, jax.random.PRNGKey(0))
  from xmtf_pipeline.adafactor import Adafactor
  from xmtf_pipeline.trainer import TrainState
  state = TrainState.create(target, Adafactor()).state_dict()
  ckpt = checkpoints.Checkpointer(str(model_dir))
  got = ckpt.restore_latest(state)
  ckpt.close()
  assert got is not None and got[0] == step
  return params.flatten(got[1]["target"]), got[1]["state"], got[2]


def _wait_for(path: Path, proc, timeout=120):
  t0 = time.time()
  while not path.exists():
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() - t0 < timeout, f"{path} never appeared"
    time.sleep(0.05)


# Issue 28's levers, as the one-GPU recipes set them: bf16 parameters and microbatch
# accumulator, stochastically rounded with keys from the seed and the step; accumulation fused
# into the scanned layers' backward pass; the update in slices.
LEAN = {"adafactor.Adafactor.param_dtype": "'bfloat16'",
        "adafactor.Adafactor.stochastic_rounding": "True",
        "adafactor.Adafactor.accumulator_dtype": "'bfloat16'", "NUM_MICROBATCHES": "2",
        "adafactor.Adafactor.fused_accumulation": "True",
        "adafactor.Adafactor.sliced_update": "True", "network.T5Config.scan_layers": "True"}


@pytest.mark.parametrize("lean", [False, True], ids=["default", "bf16-stochastic-rounding"])
def test_kill_9_and_resume_is_bitwise_identical(tmp_path, capsys, lean):
  steps = 30
  options = LEAN if lean else {}
  # Only the killed run needs a process of its own. The uninterrupted reference and the resumed
  # run (a plain restart, nothing is sent to it) run here, through the same entry point and flags.
  assert train_lib.main(_flags(tmp_path / "ref", steps, **options)) == 0

  rng = np.random.default_rng()
  delay = float(rng.uniform(0.0, 1.0))
  run = _spawn(tmp_path / "run", steps, **options)
  _wait_for(tmp_path / "run" / "checkpoint_5", run)
  time.sleep(delay)  # then kill -9 wherever it is: mid-step, mid-save, ...
  run.send_signal(signal.SIGKILL)
  run.communicate(timeout=60)
  capsys.readouterr()
  assert train_lib.main(_flags(tmp_path / "run", steps, **options)) == 0
  out = capsys.readouterr().out
  assert "Restored checkpoint_" in out, out

  want, want_state, want_data = _final_params(tmp_path / "ref", steps)
  got, got_state, got_data = _final_params(tmp_path / "run", steps)
  assert got_data == want_data
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=f"{path} (delay {delay:.2f}s)")
  for a, b in zip(jax.tree_util.tree_leaves(got_state), jax.tree_util.tree_leaves(want_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  from xmtf_pipeline.interop import restore
  stored = restore.open_reader(str(tmp_path / "run" / f"checkpoint_{steps}"))
  dtype = np.asarray(stored.read("target/encoder/layers_0/mlp/wi_0/kernel")).dtype
  assert dtype == (np.dtype("bfloat16") if lean else np.float32), dtype


def test_sigterm_saves_a_restorable_checkpoint_and_exits_0(tmp_path, capsys):
  run = _spawn(tmp_path / "run", 100_000, SAVE_PERIOD=1000)
  _wait_for(tmp_path / "run" / "train", run)  # the first log interval was written
  run.send_signal(signal.SIGTERM)
  out, _ = run.communicate(timeout=120)
  assert run.returncode == 0, out
  assert "SIGTERM: saved checkpoint_" in out
  step = int(out.split("SIGTERM: saved checkpoint_")[1].split()[0])
  assert 0 < step < 100_000
  got, _, data = _final_params(tmp_path / "run", step)
  assert data["batches"] == step
  # And the run continues from there (a plain restart: no signal, so no process of its own).
  capsys.readouterr()
  assert train_lib.main(_flags(tmp_path / "run", step + 5)) == 0
  out = capsys.readouterr().out
  assert f"Restored checkpoint_{step}" in out, out


def test_ctrl_c_saves_and_exits_130_and_a_second_one_aborts(tmp_path):
  run = _spawn(tmp_path / "run", 100_000, SAVE_PERIOD=1000)
  _wait_for(tmp_path / "run" / "train", run)
  run.send_signal(signal.SIGINT)
  out, _ = run.communicate(timeout=120)
  assert run.returncode == 130, out
  assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
  assert "SIGINT: saved checkpoint_" in out, out
  step = int(out.split("SIGINT: saved checkpoint_")[1].split()[0])
  _, _, data = _final_params(tmp_path / "run", step)
  assert data["batches"] == step


def test_second_ctrl_c_aborts_at_once():
  """The handler the loop runs under: the first SIGINT asks for a save, the second exits 130."""
  script = textwrap.dedent("""
      import os, signal, time
      from xmtf_pipeline.train import _Preemption
      with _Preemption() as p:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        assert p.requested and p.name == "SIGINT", p.signal
        print("first: save requested", flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)
      print("not aborted")
  """)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
  got = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
  assert got.returncode == 130, got
  assert "first: save requested" in got.stdout and "not aborted" not in got.stdout, got
  assert "Second Ctrl-C: aborting without saving" in got.stderr and "Traceback" not in got.stderr


def test_demo_stops_on_sigterm(tmp_path):
  """SIGTERM during the demo's training saves and stops: no evaluation or export after it."""
  demo_dir = tmp_path / "demo"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
  run = subprocess.Popen([sys.executable, "-m", "xmtf_pipeline.cli", "demo", "--model_dir",
                          str(demo_dir), "--steps", "400", "--batch_size", "8"], cwd=REPO,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  # The demo logs every steps // 10 steps: the first log interval (step 40; 360 steps still to
  # run, no checkpoint before the last step) says training runs.
  _wait_for(demo_dir / "train", run, timeout=300)
  run.send_signal(signal.SIGTERM)
  try:
    out, _ = run.communicate(timeout=120)
  except subprocess.TimeoutExpired:  # still evaluating or exporting: the bug this test is for
    run.kill()
    out = run.communicate()[0]
  assert run.returncode == 143, out
  assert "SIGTERM: saved checkpoint_" in out and "stopped by SIGTERM" in out, out
  assert "[4/4]" not in out and "[eval]" not in out and "[export]" not in out, out
  assert not (demo_dir / "hf").exists()
  assert list(demo_dir.glob("checkpoint_*"))


def test_half_written_checkpoint_is_skipped(tmp_path, capsys, caplog):
  model_dir = tmp_path / "run"
  assert train_lib.main(_flags(model_dir, steps=10)) == 0
  # Damage the newest checkpoint as a crash mid-write on a non-atomic filesystem would.
  _damage(model_dir / "checkpoint_10")
  capsys.readouterr()
  assert train_lib.main(_flags(model_dir, steps=12)) == 0
  captured = capsys.readouterr()
  out = captured.out
  # Said once (not again through logging), in words (no pybind11 source locations).
  said = out + captured.err + "".join(r.getMessage() for r in caplog.records)
  assert said.lower().count("skipping") == 1, said
  assert "skipping unreadable checkpoint checkpoint_10" in out
  assert "pybind11" not in out and "source locations" not in out, out
  assert "Restored checkpoint_5" in out
  # Never more than one set aside per start: with checkpoint_12 and the new checkpoint_10
  # damaged, the start sets checkpoint_12 aside and stops at checkpoint_10, moving nothing else.
  _damage(model_dir / "checkpoint_12")
  _damage(model_dir / "checkpoint_10")
  assert train_lib.main(_flags(model_dir, steps=14)) == 2
  err = capsys.readouterr().err
  assert "checkpoint_10 in" in err and "cannot be read either" in err, err
  assert sorted(p.name for p in model_dir.glob("checkpoint_*")) == [
      "checkpoint_10", "checkpoint_10.unreadable", "checkpoint_12.unreadable", "checkpoint_5"]


def _damage(checkpoint):
  for f in (checkpoint / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"")


def test_changed_model_on_restart_stops_before_any_rename(tmp_path, capsys):
  """A checkpoint that does not fit the configured model is a configuration error."""
  model_dir = tmp_path / "run"
  assert train_lib.main(_flags(model_dir, steps=10)) == 0
  before = sorted(os.listdir(model_dir))
  config_gin = (model_dir / "config.gin").read_text()
  capsys.readouterr()
  assert train_lib.main(_flags(model_dir, steps=12) + ["--gin.network.T5Config.emb_dim=32"]) == 2
  captured = capsys.readouterr()
  err = captured.err.strip()
  assert len(err.splitlines()) == 1, err
  assert "checkpoint_10" in err and "has shape (64,)" in err and "expects (32,)" in err, err
  assert "new MODEL_DIR" in err and "config.gin" in err, err
  assert sorted(os.listdir(model_dir)) == before  # nothing renamed, nothing written
  assert (model_dir / "config.gin").read_text() == config_gin
  # The old config still continues the run.
  assert train_lib.main(_flags(model_dir, steps=11)) == 0
  assert "Restored checkpoint_10" in capsys.readouterr().out


def test_changed_run_config_on_restart_is_kept_and_shown(tmp_path, capsys):
  model_dir = tmp_path / "run"
  assert train_lib.main(_flags(model_dir, steps=5)) == 0
  first = (model_dir / "config.gin").read_text()
  capsys.readouterr()
  assert train_lib.main(_flags(model_dir, steps=7, BATCH_SIZE=8, DROPOUT_RATE=0.0)) == 0
  out = capsys.readouterr().out
  assert "kept it as config-5.gin" in out, out
  assert "BATCH_SIZE: 16 -> 8" in out and "DROPOUT_RATE: 0.1 -> 0.0" in out, out
  assert "TRAIN_STEPS: 5 -> 7" in out and "RANDOM_SEED" not in out, out
  assert (model_dir / "config.gin").read_text() == first  # the first start's, kept
  assert "BATCH_SIZE = 8" in (model_dir / "config-5.gin").read_text()
  # A start with the same config as the last one records nothing new.
  assert train_lib.main(_flags(model_dir, steps=7, BATCH_SIZE=8, DROPOUT_RATE=0.0)) == 0
  assert "config:" not in capsys.readouterr().out
  assert sorted(p.name for p in model_dir.glob("config*.gin")) == ["config-5.gin", "config.gin"]


@pytest.mark.parametrize("override,message", [
    ({"MODEL_DIR": "UNSET"}, "MODEL_DIR set to %gin.REQUIRED but not subsequently overridden"),
    ({"train_script.train.total_stepz": "3"}, "doesn't have a parameter named 'total_stepz'"),
    ({"nowhere.Thing.x": "1"}, "No configurable matching 'nowhere.Thing'"),
    ({"TASK_FEATURE_LENGTHS": "{'inputs': 16}"}, "missing feature(s) ['targets']"),
    ({"MIXTURE_OR_TASK_NAME": '"no_such_task"'}, "'no_such_task' is not registered"),
    ({"LOSS_NORMALIZING_FACTOR": '"PER_SEQ"'}, "LOSS_NORMALIZING_FACTOR='PER_SEQ' is not known"),
    ({"INITIAL_CHECKPOINT_PATH": '"/nonexistent/ckpt"'}, "/nonexistent/ckpt does not exist"),
])
def test_bad_configuration_fails_before_work_naming_it(tmp_path, capsys, override, message):
  assert train_lib.main(_flags(tmp_path / "run", **override)) == 2
  err = capsys.readouterr().err
  assert message in err, err
  assert not list((tmp_path / "run").glob("checkpoint_*"))


def test_unwritable_model_dir(tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  assert train_lib.main(_flags(blocker / "run")) == 2
  assert "is not writable" in capsys.readouterr().err


def test_batch_not_divisible_by_data_parallel_size():
  import tasks.synthetic  # noqa: F401
  from xmtf_pipeline import input_pipeline
  cfg = input_pipeline.DatasetConfig("synthetic_copy", {"inputs": 8, "targets": 8}, "train", 30,
                                     True)
  with pytest.raises(input_pipeline.DatasetError, match="BATCH_SIZE=30 is not divisible by .* 4"):
    input_pipeline.validate(cfg, num_shards=4)


def test_initial_checkpoint_of_another_size_names_the_parameter(tmp_path, capsys):
  other = tmp_path / "other"
  assert train_lib.main(_flags(other, steps=1, SAVE_PERIOD=1) + [
      "--gin.network.T5Config.emb_dim=32"]) == 0
  capsys.readouterr()
  rc = train_lib.main(_flags(tmp_path / "run", steps=2,
                             INITIAL_CHECKPOINT_PATH=f'"{other}/checkpoint_1"'))
  assert rc == 2
  err = capsys.readouterr().err
  assert "decoder/decoder_norm/scale has shape (32,) but the model config expects (64,)" in err


def test_initial_checkpoint_continues_its_step(tmp_path, capsys):
  first = tmp_path / "first"
  assert train_lib.main(_flags(first, steps=5)) == 0
  capsys.readouterr()
  # TRAIN_STEPS is absolute: 5 restored + 3 more.
  assert train_lib.main(_flags(tmp_path / "second", steps=8,
                               INITIAL_CHECKPOINT_PATH=f'"{first}"')) == 0
  assert "Initialized from" in capsys.readouterr().out
  _, state, _ = _final_params(tmp_path / "second", 8)
  assert int(state["step"]) == 8


# gin/t5x/ is for upstream T5X (it includes upstream files absent here); tests/test_t5x_gin.py
# checks those files against the upstream names instead.
GIN_FILES = sorted(p.relative_to(REPO / "gin").as_posix() for p in (REPO / "gin").rglob("*.gin")
                   if not p.is_relative_to(REPO / "gin" / "t5x"))


@pytest.mark.parametrize("gin_file", GIN_FILES)
def test_every_gin_file_parses_and_binds(gin_file):
  """Each file with the REQUIRED macros filled parses, and its objects build."""
  import tasks.synthetic  # noqa: F401
  required = {
      "DROPOUT_RATE": "0.0", "MODEL_DIR": "'/tmp/x'", "MIXTURE_OR_TASK_NAME": "'synthetic_copy'",
      "TASK_FEATURE_LENGTHS": "{'inputs': 8, 'targets': 8}", "TRAIN_STEPS": "10",
      "INITIAL_CHECKPOINT_PATH": "None", "CHECKPOINT_PATH": "'/tmp/ckpt'",
      "EVAL_OUTPUT_DIR": "'/tmp/eval'", "INFER_OUTPUT_DIR": "'/tmp/infer'"}
  if gin_file.startswith("models/"):
    files, needed = [gin_file], ["DROPOUT_RATE"]
  elif gin_file.startswith("mt0/") and not Path(gin_file).stem.endswith(
      gin_config.SHARED_BASE_SUFFIX):  # complete recipes: only MODEL_DIR is left to the user
    files, needed = [gin_file], ["MODEL_DIR"]
  else:
    files, needed = ["models/mt5_tiny.gin", gin_file], list(required)
  bindings = [f"{k} = {required[k]}" for k in needed]
  gin_config.parse(files, bindings, finalize=False)
  gin_config.check_required_macros()
  config = gin_config.evaluate("%MODEL_CONFIG")
  assert config.vocab_size > 0
  if gin_file in ("runs/eval.gin", "runs/infer.gin"):
    assert gin_config.evaluate("@models.EncoderDecoderModel()") is not None
  elif not gin_file.startswith("models/"):
    for ref in ("@models.EncoderDecoderModel()", "@train/input_pipeline.DatasetConfig()",
                "@train_eval/input_pipeline.DatasetConfig()", "@checkpoints.CheckpointConfig()",
                "@adafactor.Adafactor()", "@schedules.create_learning_rate_scheduler()",
                "@partitioning.Partitioner()"):
      assert gin_config.evaluate(ref) is not None, ref


def test_validation_suite_during_training_feeds_select_checkpoint(tmp_path, capsys):
  model_dir = tmp_path / "run"
  assert train_lib.main(_flags(model_dir, steps=5, EVAL_PERIOD=5,
                               VALIDATION_SUITE='"heldout_copa"',
                               VALIDATION_MAX_EXAMPLES=4)) == 0
  assert "validation score" in capsys.readouterr().out
  stored = list((model_dir / "validation").rglob("checkpoint_5.json"))
  assert len(stored) == 1
  assert list((model_dir / "validation").glob("events.out.tfevents.*")) or \
      list(model_dir.glob("validation/events.out.tfevents.*"))
