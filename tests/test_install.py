"""What scripts/install.sh leaves behind that the suite's speed depends on."""

import importlib.metadata
import importlib.util
import pathlib
import re
import sys

import pytest


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
