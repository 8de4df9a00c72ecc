"""The xmtf command line."""

import subprocess
import sys

from xmtf_pipeline import cli


def test_help_lists_subcommands():
  out = subprocess.run([sys.executable, "-m", "xmtf_pipeline.cli", "--help"], capture_output=True,
                       text=True, check=True).stdout
  for command in ("demo", "params"):
    assert command in out


def test_unknown_model_is_a_clear_error(capsys):
  assert cli.main(["params", "--model", "mt5_nope"]) == 2
  err = capsys.readouterr().err
  assert "Unknown model 'mt5_nope'" in err and "mt5_large" in err


def test_demo_runs_forward_pass(capsys):
  assert cli.main(["demo"]) == 0
  out = capsys.readouterr().out
  assert "total (52 arrays)" in out and "forward pass: logits (2, 8, 512)" in out
