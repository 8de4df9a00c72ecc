"""GSPMD partitioning on 8 fake CPU devices, multi-process runs, and bad input."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import distributed_testlib
import micro_model
import numpy as np
import pytest

from xmtf_pipeline import distributed, input_pipeline
from xmtf_pipeline import train as train_lib
from xmtf_pipeline.partitioning import Partitioner, PartitioningError

REPO = Path(__file__).resolve().parent.parent


def _env(devices=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
  if devices:
    env["XLA_FLAGS"] = (f"{env.get('XLA_FLAGS', '')} "
                        f"--xla_force_host_platform_device_count={devices}").strip()
  return env


def test_meshes_match_one_device_and_rules():
  out = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "sharding_check.py")],
                       env=_env(8), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.split("JSON:", 1)[1])
  assert set(report["runs"]) == {"data4_model2", "data2_model4", "fully_sharded_data4_model2",
                                 "submesh_1_1_2_1"}
  for name, r in report["runs"].items():
    assert r["param_rel"] <= 1e-5 and r["loss_rel"] <= 1e-5, (name, r)
    assert r["mismatched_specs"] == [], (name, r["mismatched_specs"])
    assert r["v_row_replicated"] and r["mesh_ok"], name
    # The planner's per-device bytes are the real shard sizes on device 0.
    assert r["planned_param_bytes"] == r["actual_param_bytes"], (name, r)
    assert r["planned_opt_bytes"] == r["actual_opt_bytes"], (name, r)
  assert report["runs"]["data2_model4"]["mesh"] == {"data": 2, "model": 4}
  assert report["runs"]["fully_sharded_data4_model2"]["embedding_spec"] == "P('model', 'data')"


def test_mesh_that_does_not_divide_devices():
  with pytest.raises(PartitioningError, match="Model-parallel size 3 does not divide the 1 dev"):
    _ = Partitioner(num_partitions=3).mesh


def test_rule_naming_unknown_axis():
  with pytest.raises(PartitioningError, match="unknown mesh axis"):
    _ = Partitioner(logical_axis_rules=[("batch", "dta")]).rules


def test_num_partitions_and_submesh_are_exclusive():
  with pytest.raises(PartitioningError, match="not both"):
    Partitioner(num_partitions=2, model_parallel_submesh=(1, 1, 2, 1))


def test_batch_not_divisible_by_data_parallel_size():
  cfg = input_pipeline.DatasetConfig("synthetic_copy", {"inputs": 8, "targets": 8}, "train", 12,
                                     True)
  with pytest.raises(train_lib.TrainError, match="BATCH_SIZE=12 .* data-parallel size 8"):
    train_lib._check_divisible(cfg, 8, 1)


def test_unreachable_coordinator_fails_fast_naming_the_address():
  port = distributed_testlib.free_port()
  code = ("from xmtf_pipeline import distributed\n"
          f"distributed.initialize('localhost:{port}', 2, 1, timeout_s=5)\n")
  t0 = time.time()
  out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True,
                       timeout=120)
  assert out.returncode != 0
  assert f"localhost:{port}" in out.stderr and "process 0 is running" in out.stderr
  assert time.time() - t0 < 60


def test_process_flags_are_checked():
  with pytest.raises(distributed.DistributedError, match="needs --process_count"):
    distributed.initialize("localhost:1234", None, None)


def _train_flags(model_dir, steps):
  flags = {
      "MODEL_DIR": f'"{model_dir}"', "MIXTURE_OR_TASK_NAME": '"synthetic_copy"',
      "MIXTURE_OR_TASK_MODULE": '"tasks.synthetic"',
      "TASK_FEATURE_LENGTHS": "{'inputs': 16, 'targets': 8}", "TRAIN_STEPS": str(steps),
      "INITIAL_CHECKPOINT_PATH": "None", "BATCH_SIZE": "16", "DROPOUT_RATE": "0.0",
      "RANDOM_SEED": "3", "LOG_PERIOD": "4", "SAVE_PERIOD": "4", "EVAL_PERIOD": "0", "PACK": "False",
      "train/input_pipeline.DatasetConfig.shuffle": "False",
  }
  return ["--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin", *micro_model.GIN_FLAGS,
          *[f"--gin.{k}={v}" for k, v in flags.items()]]


def _run_one_process(model_dir, steps):
  # The one-process runs are the plain single-host path: no jax.distributed, so they run in this
  # process (the same gin flags `xmtf train` parses) instead of paying a fresh interpreter's
  # imports; the two-process runs are real separate processes.
  assert train_lib.main(_train_flags(model_dir, steps)) == 0


def _run_two_processes(runs):
  """``runs`` ((model_dir, steps), ...) one after another in one launch of two processes:
  jax.distributed starts with the first and the later ones restart in the same processes."""
  def command(port, i, attempt):
    argv = [*_train_flags(*runs[0]), "--multiprocess_gpu",
            f"--coordinator_address=localhost:{port}", "--process_count=2", f"--process_index={i}"]
    for run in runs[1:]:
      argv += ["--next", *_train_flags(*run)]
    return [sys.executable, str(REPO / "tests" / "scripts" / "train_runs.py"), *argv]
  return distributed_testlib.run_processes(command, 2, _env(), REPO)


def _params(model_dir, step):
  import jax

  from xmtf_pipeline import checkpoints, params
  from xmtf_pipeline.adafactor import Adafactor
  from xmtf_pipeline.trainer import TrainState
  cfg = micro_model.config()
  target = TrainState.create(params.init_params(cfg, jax.random.PRNGKey(0)), Adafactor())
  ckpt = checkpoints.Checkpointer(str(model_dir))
  got = ckpt.restore_latest(target.state_dict())
  ckpt.close()
  assert got[0] == step
  return params.flatten(got[1]["target"])


def test_two_processes_equal_one_and_checkpoints_cross_restore(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  _run_one_process(one, 8)
  shutil.copytree(one, tmp_path / "one_at_8")
  # One launch of two processes: `two` from scratch to step 8, then the 1-process checkpoint of
  # `one` continued to step 12.
  outs = _run_two_processes([(two, 8), (one, 12)])
  assert all("Restored checkpoint_8" in o for o in outs), outs[0][-3000:]
  a, b = _params(two, 8), _params(tmp_path / "one_at_8", 8)
  for p in b:
    rel = np.linalg.norm(a[p] - b[p]) / max(np.linalg.norm(b[p]), 1e-30)
    assert rel <= 1e-5, (p, rel)
  # And the 2-process checkpoint continues in 1 process.
  _run_one_process(two, 12)
  a, b = _params(two, 12), _params(one, 12)
  for p in a:
    assert np.linalg.norm(a[p] - b[p]) <= 1e-4 * max(np.linalg.norm(b[p]), 1e-30), p


@pytest.mark.parametrize("script,args,expected", [
    ("launch_tpu_pod.sh", ["my-v4-64", "us-central2-b", "--", "--gin_file=mt0/mt0_large_xp3.gin"],
     ["gcloud compute tpus tpu-vm ssh my-v4-64", "--worker=all", "install.sh", "xmtf\\ train"]),
    ("launch_slurm.sh", ["--", "--gin_file=mt0/mt0_xl_xp3.gin"],
     ["srun", "--multiprocess_gpu", "--coordinator_address=", "--process_index=\\$SLURM_PROCID"]),
    ("finetune.sh", ["mt5_tiny", "/tmp/x", "xp3_sample", "10"], ["xmtf train", "runs/finetune.gin"]),
])
def test_launchers_dry_run(script, args, expected):
  env = dict(os.environ, DRY_RUN="1")
  cmd = ["bash", str(REPO / "scripts" / script)]
  cmd += ["--dry_run"] if script != "finetune.sh" else []
  out = subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=30)
  assert out.returncode == 0, out.stderr
  for piece in expected:
    assert piece in out.stdout, (piece, out.stdout)
