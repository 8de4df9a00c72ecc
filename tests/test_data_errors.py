"""Data errors during `xmtf train` and `xmtf data`: one line naming the file, exit 2, never a hang."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xmtf_pipeline import cli
from xmtf_pipeline import train as train_lib

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tasks" / "data" / "xp3_sample" / "en" / "merged_en.jsonl"
SPM = REPO / "tasks" / "data" / "spm" / "xp3_sample.model"


def _flags(model_dir):
  return ["--gin_file=models/mt5_tiny.gin", "--gin_file=runs/finetune.gin",
          f'--gin.MODEL_DIR="{model_dir}"', '--gin.MIXTURE_OR_TASK_NAME="xp3_en"',
          '--gin.MIXTURE_OR_TASK_MODULE="tasks.xp3"',
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", "--gin.TRAIN_STEPS=20",
          "--gin.INITIAL_CHECKPOINT_PATH=None", "--gin.BATCH_SIZE=8", "--gin.DROPOUT_RATE=0.0",
          "--gin.EVAL_PERIOD=0"]


def _xp3_root(tmp_path, lines):
  (tmp_path / "xp3" / "en").mkdir(parents=True)
  (tmp_path / "xp3" / "en" / "merged_en.jsonl").write_text("".join(lines))
  return tmp_path / "xp3"


def test_malformed_line_in_training_is_one_line_and_the_process_exits(tmp_path):
  lines = SAMPLE.read_text().splitlines(keepends=True)[:60]
  lines[19] = '{"inputs": "broken\n'
  root = _xp3_root(tmp_path, lines)
  env = dict(os.environ, XP3_DIR=str(root), MT5_SPM_PATH=str(SPM), PYTHONPATH=str(REPO))
  t0 = time.time()
  # The bound is the hang check: a run that deadlocked at exit would be killed here.
  out = subprocess.run([sys.executable, "-m", "xmtf_pipeline.cli", "train",
                        *_flags(tmp_path / "run")], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=240)
  assert out.returncode == 2, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if "error" in line]
  assert errors == [errors[0]] and "merged_en.jsonl:20: malformed JSON" in errors[0], out.stderr
  assert "Traceback" not in out.stderr and "InvalidArgumentError" not in out.stderr
  print(f"exited {time.time() - t0:.0f} s after start")


@pytest.mark.parametrize("case", ["missing_root", "empty_file"])
def test_missing_or_empty_data_in_training_names_it(tmp_path, monkeypatch, capsys, case):
  root = tmp_path / "nowhere" if case == "missing_root" else _xp3_root(tmp_path, [])
  monkeypatch.setenv("XP3_DIR", str(root))
  monkeypatch.setenv("MT5_SPM_PATH", str(SPM))
  assert train_lib.main(_flags(tmp_path / "run")) == 2
  err = capsys.readouterr().err
  want = "is not a directory" if case == "missing_root" else "merged_en.jsonl is empty"
  assert want in err and str(root) in err, err
  assert "ran out" not in err and len(err.strip().splitlines()) == 1, err


def test_xmtf_data_on_an_empty_file_names_it(tmp_path, monkeypatch, capsys):
  root = _xp3_root(tmp_path, [])
  monkeypatch.setenv("XP3_DIR", str(root))
  monkeypatch.setenv("MT5_SPM_PATH", str(SPM))
  assert cli.main(["data", "xp3_en", "-n", "1"]) == 2
  err = capsys.readouterr().err
  assert "merged_en.jsonl is empty" in err and "IndexError" not in err, err
