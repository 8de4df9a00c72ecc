"""What scripts/install.sh leaves behind that the suite's speed depends on, and the package a
user installs from a wheel (not editable, away from the repository)."""

import importlib.metadata
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


# The last two sit beside folders install.sh leaves uncompiled (other models, dataset builders).
@pytest.mark.parametrize("module", ["tensorflow", "seqio", "jax", "flax", "transformers",
                                    "transformers.models.mt5.modeling_mt5",
                                    "tensorflow_datasets.core.dataset_builder"])
def test_installed_packages_are_byte_compiled(module):
  # Where PYTHONDONTWRITEBYTECODE is set, Python never writes .pyc files, so a venv installed
  # without them compiles TensorFlow's sources again in every process (`import seqio`: 22 s
  # instead of 7 s, in each CLI call and test subprocess). install.sh byte-compiles site-packages.
  origin = pathlib.Path(importlib.util.find_spec(module).origin)
  cached = pathlib.Path(importlib.util.cache_from_source(str(origin)))
  assert cached.exists(), (
      f"{module} has no byte-compiled {cached.name} beside {origin}: run scripts/install.sh "
      f"(or .venv/bin/python -m compileall -q -j 0 {origin.parent.parent})")


def test_the_venv_runs_the_pip_install_sh_pins():
  # The pip a fresh venv bundles (23.2.1 with Python 3.11.7) resolves the same pins, only slower:
  # install.sh upgrades it to its pinned version before installing anything.
  script = (pathlib.Path(__file__).resolve().parent.parent / "scripts" / "install.sh").read_text()
  pinned = re.search(r"^PIP_VERSION=(\S+)$", script, re.M).group(1)
  if sys.prefix == sys.base_prefix:
    pytest.skip("not running in a venv that install.sh made")
  assert importlib.metadata.version("pip") == pinned, (
      f"{sys.prefix} has pip {importlib.metadata.version('pip')}, install.sh pins {pinned}: run "
      "scripts/install.sh")


# Left out of the copy the wheel is built from: the build leaves build/ and *.egg-info in its
# source folder (and packs a stale build/lib's files), which the checkout must not get.
_NOT_SOURCES = {".git", ".venv", "build", "dist", "runs", ".pytest_cache", ".ruff_cache"}


def _not_sources(folder, names):
  top = _NOT_SOURCES if pathlib.Path(folder) == REPO else set()
  return [n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")]


def _pip(*args, cwd=None):
  proc = subprocess.run([sys.executable, "-m", "pip", *args, "--no-index", "-q",
                         "--disable-pip-version-check"], capture_output=True, text=True, cwd=cwd)
  assert proc.returncode == 0, f"pip {args[0]} failed:\n{proc.stdout}{proc.stderr}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  """`pip wheel .` of this checkout, with the venv's setuptools and wheel (pyproject's pins)."""
  src = tmp_path_factory.mktemp("source") / "xmtf-pipeline"
  shutil.copytree(REPO, src, ignore=_not_sources)
  out = tmp_path_factory.mktemp("wheel")
  _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src))
  (built,) = out.glob("xmtf_pipeline-*.whl")
  return built


def test_the_wheel_holds_every_module_the_gin_files_and_the_bundled_data(wheel):
  # The demo in a wheel install once failed with "Unknown model 'mt5_tiny'" (gin/ was not in it),
  # and the xP3 sample and its spm model were left out by a package_data line matching nothing.
  names = set(zipfile.ZipFile(wheel).namelist())
  expected = {f"xmtf_pipeline/gin_files/{p.relative_to(REPO / 'gin').as_posix()}"
              for p in (REPO / "gin").rglob("*") if p.suffix in (".gin", ".json")}
  assert "xmtf_pipeline/gin_files/models/mt5_tiny.gin" in expected
  assert "xmtf_pipeline/gin_files/t5x/upstream_names.json" in expected
  data = REPO / "tasks" / "data"
  bundled = [*data.glob("xp3_sample/*/*.jsonl"), data / "spm" / "xp3_sample.model",
             *data.glob("heldout/**/validation.jsonl"), *data.glob("heldout/**/templates.yaml")]
  assert len(bundled) > 20, bundled  # 12 sample languages, 4 held-out datasets, 7 templates
  expected |= {p.relative_to(REPO).as_posix() for p in bundled}
  # setup.cfg lists the packages: a new one left out of it would be missing here.
  expected |= {p.relative_to(REPO).as_posix() for top in ("xmtf_pipeline", "tasks")
               for p in (REPO / top).rglob("*.py")
               if "__pycache__" not in p.parts and not p.is_relative_to(data)}
  assert not expected - names, f"{wheel.name} lacks: {sorted(expected - names)}"
  # Our two packages only: a top-level gin/ would shadow the gin-config library's `gin` package.
  dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
  assert {n.split("/")[0] for n in names} == {"xmtf_pipeline", "tasks", dist_info}


_SHOW_AND_RUN = """
import sys
import tasks.heldout, tasks.vocab, tasks.xp3, xmtf_pipeline
from xmtf_pipeline import cli, gin_config
for path in (xmtf_pipeline.__file__, tasks.__file__, gin_config.GIN_DIR, tasks.vocab.SAMPLE_SPM,
             tasks.xp3.SAMPLE_DIR, tasks.heldout.DATA_ROOT):
  print("from:", path)
sys.exit(cli.main(sys.argv[1:]))
"""


def test_the_installed_wheel_runs_the_demo_outside_the_repository(wheel, tmp_path):
  # pip install --target and PYTHONPATH: the installed copy, with the venv's dependencies, and not
  # the checkout (which the venv also maps, editable) nor the current folder.
  site = tmp_path / "site"
  _pip("install", "--no-deps", "--target", str(site), str(wheel))
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  model_dir = tmp_path / "demo"
  proc = subprocess.run(
      [sys.executable, "-c", _SHOW_AND_RUN, "demo", "--steps", "2", "--batch_size", "8",
       "--eval_examples", "2", "--model_dir", str(model_dir)],
      cwd=elsewhere, env=dict(os.environ, PYTHONPATH=str(site)), capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  paths = [line.removeprefix("from: ") for line in proc.stdout.splitlines()
           if line.startswith("from: ")]
  assert len(paths) == 6, proc.stdout
  outside = [p for p in paths if not pathlib.Path(p).resolve().is_relative_to(site.resolve())]
  assert not outside, f"not the installed copy: {outside}"
  assert "demo finished" in proc.stdout, proc.stdout[-2000:]
  assert (model_dir / "checkpoint_2").is_dir()
  assert (model_dir / "hf" / "model.safetensors").is_file()
