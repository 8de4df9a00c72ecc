"""A truncated checkpoint: eval, export-hf and select-checkpoint say so in one line, naming the
checkpoint and the array, and point at the previous checkpoint (issue 14, item 8)."""

import re

import pytest
from eval_testlib import spm_binding, write_checkpoints

import gin
from tasks import heldout
from xmtf_pipeline import cli, gin_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """MODEL_DIR with checkpoint_10 intact and checkpoint_20 cut short mid-write."""
  path = tmp_path_factory.mktemp("run")
  write_checkpoints(path, gin_config.load_model_config("mt5_tiny"), steps=(10, 20))
  data = [f for f in (path / "checkpoint_20" / "state").rglob("*") if f.is_file()
          and f.parent.name == "d"]
  biggest = max(data, key=lambda f: f.stat().st_size)
  with open(biggest, "r+b") as f:
    f.truncate(biggest.stat().st_size // 2)
  return path


@pytest.fixture(autouse=True)
def clean_gin():
  yield
  gin.clear_config()


def _one_line_naming_the_array(err, run_dir):
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert f"{run_dir}/checkpoint_20" in err and "damaged or incomplete" in err, err
  assert re.search(r"array (target|state)/\S+", err), err
  assert f"previous checkpoint {run_dir}/checkpoint_10" in err, err
  assert "Traceback" not in err


def test_eval(run_dir, tmp_path, capsys):
  rc = cli.main(["eval", "--gin_file=models/mt5_tiny.gin", "--gin_file=runs/eval.gin",
                 spm_binding(), f'--gin.CHECKPOINT_PATH="{run_dir}/checkpoint_20"',
                 f'--gin.EVAL_OUTPUT_DIR="{tmp_path / "eval"}"', '--gin.MIXTURE_OR_TASK_NAME="copa"',
                 "--gin.EVALUATOR_NUM_EXAMPLES=4", "--gin.BATCH_SIZE=4",
                 f'--gin.DATA_DIR="{heldout.BUNDLED_DIR}"'])
  assert rc == 2
  _one_line_naming_the_array(capsys.readouterr().err, run_dir)


def test_export_hf(run_dir, tmp_path, capsys):
  out = tmp_path / "hf"
  rc = cli.main(["export-hf", "--checkpoint_dir", f"{run_dir}/checkpoint_20", "--output_dir",
                 str(out), "--model", "mt5_tiny", "--spm_model",
                 str(heldout.DATA_ROOT.parent / "spm" / "xp3_sample.model")])
  assert rc == 2
  _one_line_naming_the_array(capsys.readouterr().err, run_dir)
  assert not out.exists() and not list(tmp_path.glob(".hf.tmp-*"))


def test_select_checkpoint(run_dir, capsys):
  rc = cli.main(["select-checkpoint", "--model_dir", str(run_dir), "--suite", "copa",
                 "--data_dir", str(heldout.BUNDLED_DIR), "--max_examples", "4", "--model",
                 "mt5_tiny", "--steps", "20", "--spm_model",
                 str(heldout.DATA_ROOT.parent / "spm" / "xp3_sample.model")])
  assert rc == 2
  _one_line_naming_the_array(capsys.readouterr().err, run_dir)
