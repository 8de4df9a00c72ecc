"""A plain command prints only our output: no TensorFlow/absl start-up banner on stderr."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BANNER = ("absl::InitializeLog", "oneDNN custom operations", "cudart_stub")


def _run(args, **env):
  full_env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  full_env.update(env)
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=300)


def test_xmtf_data_prints_no_tensorflow_banner():
  out = _run(["xmtf_pipeline.cli", "data", "xp3_sample", "-n", "1"])
  assert out.returncode == 0, out.stderr[-2000:]
  assert "inputs" in out.stdout
  for line in BANNER:
    assert line not in out.stderr, out.stderr


HELP_COMMANDS = (["demo"], ["train"], ["eval"], ["infer"], ["select-checkpoint"], ["plan"],
                 ["params"], ["data"], ["export-hf"], ["import-hf"], ["bench", "train"])


def test_help_of_every_command_imports_no_tensorflow(tmp_path):
  """--help answers at once (`xmtf eval --help`: 8 s when it imported TensorFlow, 1.4 s now), so
  it prints no banner either. A tensorflow that fails to import proves none is imported."""
  (tmp_path / "tensorflow.py").write_text("raise ImportError('--help imported TensorFlow')\n")
  for command in HELP_COMMANDS:
    out = _run(["xmtf_pipeline.cli", *command, "--help"], PYTHONPATH=f"{tmp_path}:{REPO}")
    assert out.returncode == 0, (command, out.stderr[-2000:])
    assert "usage: xmtf" in out.stdout, (command, out.stdout)
    for line in BANNER:
      assert line not in out.stderr, (command, out.stderr)


def test_failed_tensorflow_import_is_not_silenced(tmp_path):
  """What the hidden descriptor caught is replayed when the import fails."""
  (tmp_path / "tensorflow.py").write_text(
      "import os\nos.write(2, b'native says why\\n')\nraise ImportError('broken tf')\n")
  code = "from xmtf_pipeline import tensorflow_import\ntensorflow_import.import_quietly()\n"
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=f"{tmp_path}:{REPO}"), timeout=120)
  assert out.returncode != 0
  assert "native says why" in out.stderr and "broken tf" in out.stderr
