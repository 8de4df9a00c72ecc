"""What scripts/install.sh leaves behind that the suite's speed depends on."""

import importlib.util
import pathlib

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
