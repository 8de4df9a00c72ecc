"""``jestimator.amos`` names that T5X reads at import time (see ``jestimator/__init__.py``)."""

from typing import Any, NamedTuple


class ScaleByAmosState(NamedTuple):
  """State of the Amos optimizer (same fields as upstream); never created under the shim."""
  count: Any
  v: Any
  b: Any


def amos(*args, **kwargs):
  raise NotImplementedError(
      "jestimator shim (scripts/t5x_shims): the Amos optimizer is not available; install "
      "jestimator from git (pip install git+https://github.com/google-research/jestimator)")
