"""xmtf eval / infer / select-checkpoint refuse, before any work, what would lose or mislabel
results: an output folder that cannot be written, earlier results in it, a non-finite checkpoint,
settings that can only fail later (issue 25)."""

import json
import os
import subprocess

import numpy as np
import pytest
from eval_testlib import random_params, write_checkpoints
from micro_model import GIN_FLAGS
from micro_model import config as micro_config

import gin
from tasks import heldout
from tasks import vocab as vocab_lib
from xmtf_pipeline import checkpoints, cli
from xmtf_pipeline import params as params_lib
from xmtf_pipeline.interop import restore


@pytest.fixture(autouse=True)
def clean_gin():
  yield
  gin.clear_config()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A MODEL_DIR with two finite checkpoints of the one-layer tiny model."""
  path = tmp_path_factory.mktemp("run")
  write_checkpoints(path, micro_config(), steps=(10, 20))
  return path


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory):
  """checkpoint_10 finite; checkpoint_20 with NaN in one array and Inf in a later one."""
  from xmtf_pipeline.adafactor import Adafactor
  from xmtf_pipeline.trainer import TrainState

  path = tmp_path_factory.mktemp("diverged")
  config = micro_config()
  flat = params_lib.flatten(random_params(config, seed=1))
  names = sorted(flat)
  bad = names[len(names) // 2]
  flat[bad] = flat[bad].at[0].set(np.nan)
  flat[names[-1]] = flat[names[-1]].at[0].set(np.inf)
  ckpt = checkpoints.Checkpointer(str(path))
  for step, params in ((10, random_params(config, seed=0)), (20, params_lib.unflatten(flat))):
    ckpt.save(step, TrainState.create(params, Adafactor()).state_dict(),
              {"batches": 0, "random_seed": 0, "data_seed": 0})
  ckpt.close()
  return path, bad


@pytest.fixture
def no_loading(monkeypatch):
  """Makes loading a checkpoint fail the test: the refusals must come before it."""
  def load_params(*args, **kwargs):
    raise AssertionError("the checkpoint was loaded before the refusal")
  monkeypatch.setattr(restore, "restore_params", load_params)


def _eval(checkpoint, output_dir, *extra):
  return ["eval", "--model", "mt5_tiny", *GIN_FLAGS, "--checkpoint", str(checkpoint),
          "--output_dir", str(output_dir), "--suite", "copa", "--max_examples", "2",
          "--batch_size", "2", "--data_dir", str(heldout.BUNDLED_DIR),
          "--spm_model", str(vocab_lib.SAMPLE_SPM), *extra]


def _infer(checkpoint, output_dir, input_file, *extra):
  return ["infer", "--model", "mt5_tiny", *GIN_FLAGS, "--checkpoint", str(checkpoint),
          "--output_dir", str(output_dir), "--input_file", str(input_file), "--mode", "score",
          "--batch_size", "2", "--spm_model", str(vocab_lib.SAMPLE_SPM),
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}", *extra]


def _prompts(path):
  path.write_text(json.dumps({"inputs": "Is it?", "choices": ["Yes", "No"]}) + "\n")
  return path


def _one_error_line(capsys, prog="xmtf eval"):
  captured = capsys.readouterr()
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), captured.err
  return lines[0], captured.out


@pytest.mark.parametrize("where", ["read-only folder", "new folder in a read-only one",
                                   "below a file"])
def test_unwritable_output_dir_fails_before_the_checkpoint_loads(where, run_dir, tmp_path,
                                                                 capsys, no_loading):
  read_only = tmp_path / "ro"
  mounted = False
  if where == "below a file":  # refused for root too
    (tmp_path / "file").write_text("x")
    out_dir = tmp_path / "file" / "eval"
  else:
    read_only.mkdir()
    if os.geteuid() == 0:  # root writes through chmod: a read-only filesystem stops it
      got = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)],
                           capture_output=True, text=True)
      if got.returncode:
        pytest.skip(f"root here, and no read-only tmpfs can be mounted: {got.stderr.strip()}")
      mounted = True
    else:
      read_only.chmod(0o555)
    out_dir = read_only if where == "read-only folder" else read_only / "eval"
  try:
    rc = cli.main(_eval(f"{run_dir}/checkpoint_10", out_dir))
  finally:
    if mounted:
      subprocess.run(["umount", "-l", str(read_only)], check=False)
    elif read_only.exists():
      read_only.chmod(0o755)
  line, out = _one_error_line(capsys)
  assert rc == 2
  assert f"EVAL_OUTPUT_DIR {out_dir} " in line and "--output_dir" in line
  assert "Loaded the parameters" not in out and "Scored" not in out


def test_earlier_results_are_refused_then_replaced_with_overwrite(run_dir, tmp_path, capsys,
                                                                   monkeypatch):
  out_dir = tmp_path / "eval"
  (out_dir / "charts").mkdir(parents=True)
  for name in ("results.json", "results.md", "notes.txt", "charts/nli.png", "charts/mine.png"):
    (out_dir / name).write_text("earlier")
  earlier = out_dir / "examples" / "rte" / "rte" / "old_prompt.jsonl"  # a prompt not scored now
  earlier.parent.mkdir(parents=True)
  earlier.write_text(json.dumps(dict.fromkeys(
      ["dataset", "config", "prompt", "index", "scores", "prediction", "label"], 0)) + "\n")
  (out_dir / "examples" / "mine.jsonl").write_text('{"note": "mine"}\n')
  (out_dir / "examples" / "empty.jsonl").write_text("")  # not provably eval's: kept
  real_load = restore.restore_params
  monkeypatch.setattr(restore, "restore_params", lambda *a: pytest.fail("loaded before refusal"))
  rc = cli.main(_eval(f"{run_dir}/checkpoint_10", out_dir))
  line, _ = _one_error_line(capsys)
  assert rc == 2
  assert "results.json, results.md, charts/nli.png" in line and "--overwrite" in line
  assert (out_dir / "results.json").read_text() == "earlier"

  monkeypatch.setattr(restore, "restore_params", real_load)
  rc = cli.main(_eval(f"{run_dir}/checkpoint_10", out_dir, "--overwrite"))
  assert rc == 0, capsys.readouterr().err
  assert json.loads((out_dir / "results.json").read_text())["meta"]["max_examples"] == 2
  assert (out_dir / "results.md").read_text() != "earlier"
  assert (out_dir / "charts" / "sentence_completion.png").is_file()
  # Ours only: the user's files stay; the earlier run's NLI chart (not scored now) goes.
  assert (out_dir / "notes.txt").read_text() == "earlier"
  assert (out_dir / "charts" / "mine.png").read_text() == "earlier"
  assert not (out_dir / "charts" / "nli.png").exists()
  assert not earlier.exists() and (out_dir / "examples" / "mine.jsonl").is_file()
  assert (out_dir / "examples" / "empty.jsonl").is_file()
  assert len(list((out_dir / "examples").rglob("*.jsonl"))) > 2  # this run's files are there


def test_infer_refuses_to_replace_its_output_without_overwrite(run_dir, tmp_path, capsys,
                                                               monkeypatch):
  src = _prompts(tmp_path / "prompts.jsonl")
  out_dir = tmp_path / "out"
  out_dir.mkdir()
  written = out_dir / "prompts-score.jsonl-00000-of-00001"
  written.write_text("earlier\n")
  (out_dir / "other.jsonl").write_text("mine\n")
  real_load = restore.restore_params
  monkeypatch.setattr(restore, "restore_params", lambda *a: pytest.fail("loaded before refusal"))
  rc = cli.main(_infer(f"{run_dir}/checkpoint_10", out_dir, src))
  line, _ = _one_error_line(capsys, "xmtf infer")
  assert rc == 2
  assert f"INFER_OUTPUT_DIR {out_dir} already holds {written.name}" in line
  assert "--overwrite" in line and written.read_text() == "earlier\n"

  monkeypatch.setattr(restore, "restore_params", real_load)
  assert cli.main(_infer(f"{run_dir}/checkpoint_10", out_dir, src, "--overwrite")) == 0
  assert len(json.loads(written.read_text())["scores"]) == 2
  assert (out_dir / "other.jsonl").read_text() == "mine\n"


def test_nonfinite_checkpoint_is_refused_naming_the_array_and_the_last_finite_one(
    diverged_run, tmp_path, capsys):
  model_dir, bad = diverged_run
  # MODEL_DIR means its newest checkpoint: the message names that folder, not MODEL_DIR.
  rc = cli.main(_eval(model_dir, tmp_path / "eval"))
  line, out = _one_error_line(capsys)
  assert rc == 2
  assert f"Checkpoint {model_dir}/checkpoint_20 holds NaN/Inf values" in line
  assert f"(first in target/{bad})" in line
  assert f"use the last finite checkpoint {model_dir}/checkpoint_10" in line
  assert "Loaded the parameters" not in out and not (tmp_path / "eval" / "results.json").exists()
  # xmtf infer loads through the same function.
  rc = cli.main(_infer(f"{model_dir}/checkpoint_20", tmp_path / "out",
                       _prompts(tmp_path / "prompts.jsonl")))
  line, _ = _one_error_line(capsys, "xmtf infer")
  assert rc == 2 and f"target/{bad}" in line and f"{model_dir}/checkpoint_10" in line


def test_nonfinite_hf_folder_is_refused_naming_the_tensor(tmp_path):
  from hf_reference import save_hf_checkpoint
  config = micro_config()
  flat = params_lib.flatten(random_params(config))
  flat["encoder/layers_0/mlp/wo/kernel"] = flat["encoder/layers_0/mlp/wo/kernel"].at[0].set(
      np.inf)
  save_hf_checkpoint(flat, config, str(tmp_path / "hf"))
  with pytest.raises(checkpoints.CheckpointError) as e:
    restore.restore_params(str(tmp_path / "hf"), config)
  message = str(e.value)
  assert len(message.splitlines()) == 1 and f"{tmp_path / 'hf'} holds NaN/Inf" in message
  assert "encoder.block.0.layer.1.DenseReluDense.wo.weight" in message


@pytest.mark.parametrize("flag,value,name", [
    ("--max_examples", "0", "EVALUATOR_NUM_EXAMPLES"),
    ("--max_examples", "-3", "EVALUATOR_NUM_EXAMPLES"),
    ("--batch_size", "-1", "BATCH_SIZE"),
    ("--batch_size", "0", "BATCH_SIZE"),
])
def test_eval_settings_below_one_fail_up_front_naming_the_flag(flag, value, name, run_dir,
                                                               tmp_path, capsys, no_loading):
  argv = _eval(f"{run_dir}/checkpoint_10", tmp_path / "eval")
  argv[argv.index(flag) + 1] = value
  rc = cli.main(argv)
  line, _ = _one_error_line(capsys)
  assert rc == 2
  assert f"{name} ({flag}) must be a whole number of at least 1, got {value}" in line
  assert "copa" not in line  # not the data file's fault
  assert not (tmp_path / "eval").exists()  # nothing done, not even the output folder


@pytest.mark.parametrize("flag,value,name", [("--batch_size", "0", "BATCH_SIZE"),
                                             ("--max_examples", "0", "INFER_NUM_EXAMPLES")])
def test_infer_settings_below_one_fail_up_front(flag, value, name, run_dir, tmp_path, capsys,
                                                no_loading):
  argv = _infer(f"{run_dir}/checkpoint_10", tmp_path / "out", _prompts(tmp_path / "p.jsonl"),
                flag, value)
  if flag == "--batch_size":
    argv.remove("--batch_size")
    argv.remove("2")
  rc = cli.main(argv)
  line, _ = _one_error_line(capsys, "xmtf infer")
  assert rc == 2 and f"{name} ({flag}) must be a whole number of at least 1, got {value}" in line


def test_select_checkpoint_refuses_max_examples_zero(run_dir, capsys, no_loading):
  rc = cli.main(["select-checkpoint", "--model_dir", str(run_dir), "--suite", "copa",
                 "--max_examples", "0", "--model", "mt5_tiny",
                 "--spm_model", str(vocab_lib.SAMPLE_SPM)])
  line, _ = _one_error_line(capsys, "xmtf select-checkpoint")
  assert rc == 2 and "--max_examples must be a whole number of at least 1, got 0" in line


@pytest.mark.parametrize("command", ["eval", "infer"])
def test_missing_checkpoint_is_said_to_be_missing_not_modelless(command, tmp_path, capsys):
  missing = tmp_path / "no" / "checkpoint_5"
  argv = [command, "--checkpoint", str(missing), "--output_dir", str(tmp_path / "out")]
  argv += (["--suite", "copa"] if command == "eval"
           else ["--input_file", str(_prompts(tmp_path / "p.jsonl"))])
  rc = cli.main(argv)
  line, _ = _one_error_line(capsys, f"xmtf {command}")
  assert rc == 2
  assert f"CHECKPOINT_PATH {missing} does not exist" in line and "--model" not in line
