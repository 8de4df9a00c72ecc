"""What scripts/install.sh leaves behind that the suite's speed depends on."""

import importlib.util
import pathlib

import pytest


@pytest.mark.parametrize("module", ["tensorflow", "seqio", "jax", "flax", "transformers"])
def test_installed_packages_are_byte_compiled(module):
  # Where PYTHONDONTWRITEBYTECODE is set, Python never writes .pyc files, so a venv installed
  # without them compiles TensorFlow's sources again in every process (`import seqio`: 22 s
  # instead of 7 s, in each CLI call and test subprocess). install.sh byte-compiles site-packages.
  origin = pathlib.Path(importlib.util.find_spec(module).origin)
  cached = pathlib.Path(importlib.util.cache_from_source(str(origin)))
  assert cached.exists(), (
      f"{module} has no byte-compiled {cached.name} beside {origin}: run scripts/install.sh "
      f"(or .venv/bin/python -m compileall -q -j 0 {origin.parent.parent})")
