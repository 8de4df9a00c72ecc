"""The xmtf command line."""

import subprocess
import sys
from pathlib import Path

import pytest

from xmtf_pipeline import cli


def test_help_lists_subcommands():
  out = subprocess.run([sys.executable, "-m", "xmtf_pipeline.cli", "--help"], capture_output=True,
                       text=True, check=True).stdout
  for command in ("demo", "train", "params"):
    assert command in out


def test_unknown_model_is_a_clear_error(capsys):
  assert cli.main(["params", "--model", "mt5_nope"]) == 2
  err = capsys.readouterr().err
  assert "Unknown model 'mt5_nope'" in err and "mt5_large" in err


def test_demo_runs_end_to_end(tmp_path, capsys):
  assert cli.main(["demo", "--model_dir", str(tmp_path / "demo"), "--steps", "12",
                   "--batch_size", "8", "--eval_examples", "16"]) == 0
  out = capsys.readouterr().out
  assert "[4/4] validation after 12 steps" in out and "greedy outputs" in out
  assert "[eval] zero-shot rank classification on the first 16 bundled" in out
  for dataset in ("| winogrande | xl |", "| cb | cb |", "| rte | rte |", "| copa | copa |"):
    assert any(line.startswith(dataset) and line.endswith("| 5 | 16 |")
               for line in out.splitlines()), (dataset, out)
  assert (tmp_path / "demo" / "checkpoint_12").is_dir()
  assert (tmp_path / "demo" / "hf" / "config.json").is_file()
  assert (tmp_path / "demo" / "hf" / "model.safetensors").is_file()
  # The demo refuses to clear a folder it did not make.
  other = tmp_path / "mine"
  other.mkdir()
  (other / "precious.txt").write_text("keep")
  with pytest.raises(SystemExit, match="was not made by the demo"):
    cli.main(["demo", "--model_dir", str(other)])
  assert (other / "precious.txt").exists()


def test_demo_output_defaults_outside_the_source_tree(monkeypatch, tmp_path):
  """The demo's default folder once sat in the repo root (runs/demo) and broke 8 tests run
  after it: a `runs/` folder on sys.path shadowed gin's `include 'runs/...'`."""
  from xmtf_pipeline.tools import demo
  repo = Path(__file__).resolve().parent.parent
  assert cli.build_parser().parse_args(["demo"]).model_dir is None
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert demo.default_model_dir() == str(tmp_path / "xmtf" / "demo")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.chdir(repo)
  assert not Path(demo.default_model_dir()).resolve().is_relative_to(repo)


def test_ctrl_c_outside_training_is_one_line_and_exit_130(monkeypatch, capsys):
  from xmtf_pipeline import params

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(params, "param_table", interrupted)
  assert cli.main(["params", "--model", "mt5_tiny"]) == 130
  err = capsys.readouterr().err
  assert err.strip() == "xmtf params: interrupted (Ctrl-C); stopped.", err
