"""The xmtf command line."""

import subprocess
import sys
from pathlib import Path

import ci_demo
import pytest

from xmtf_pipeline import cli
from xmtf_pipeline.tools import demo


def test_help_lists_subcommands():
  out = subprocess.run([sys.executable, "-m", "xmtf_pipeline.cli", "--help"], capture_output=True,
                       text=True, check=True).stdout
  for command in ("demo", "train", "params"):
    assert command in out


def test_unknown_model_is_a_clear_error(capsys):
  assert cli.main(["params", "--model", "mt5_nope"]) == 2
  err = capsys.readouterr().err
  assert "Unknown model 'mt5_nope'" in err and "mt5_large" in err


def _check_demo_run(out: str, model_dir: Path, steps: int, eval_examples: int) -> None:
  assert f"[4/4] validation after {steps} steps" in out and "greedy outputs" in out, out
  assert f"[eval] zero-shot rank classification on the first {eval_examples} bundled" in out, out
  for dataset in ("| winogrande | xl |", "| cb | cb |", "| rte | rte |", "| copa | copa |"):
    assert any(line.startswith(dataset) and line.endswith(f"| 5 | {eval_examples} |")
               for line in out.splitlines()), (dataset, out)
  assert "demo finished in " in out and str(model_dir) in out, out
  assert (model_dir / f"checkpoint_{steps}").is_dir()
  assert (model_dir / "hf" / "config.json").is_file()
  assert (model_dir / "hf" / "model.safetensors").is_file()


def test_demo_runs_end_to_end(tmp_path, capsys):
  """The README's first command: train, evaluate (the bundled held-out suite), export.

  `.ci/run` runs `scripts/demo.sh` itself just before the suite, as the README orders, and hands
  over its transcript (tests/ci_demo.py): the same checks then read that run, made at XLA's
  defaults as a user's is, instead of training a second demo here (60 CPU-s).
  """
  run = ci_demo.ci_demo_run()
  if run:
    _check_demo_run(run.transcript, run.model_dir, run.steps, run.eval_examples)
  else:
    assert cli.main(["demo", "--model_dir", str(tmp_path / "demo"), "--steps", "12",
                     "--batch_size", "8", "--eval_examples", "16"]) == 0
    _check_demo_run(capsys.readouterr().out, tmp_path / "demo", 12, 16)
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
