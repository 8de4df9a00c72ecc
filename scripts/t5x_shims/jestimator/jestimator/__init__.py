"""Minimal import shim for ``jestimator`` (google-research/jestimator), used only to run upstream
T5X on this repo's pinned stack. PyPI's only release (0.3.3, 2022) fails to import on jax >= 0.5
(``from jax.experimental.pjit import PartitionSpec``); T5X's setup.py installs the fixed git HEAD
instead, which needs network access to GitHub.

T5X (``t5x/optimizers.py``) imports ``jestimator.amos`` and ``jestimator.amos_helper`` at import
time only to offer the Amos optimizer (``optimizers.amos``) and its state's partition rule. Our
recipes use Adafactor, so neither is ever called; calling the Amos optimizer under this shim
raises. When the real ``jestimator`` imports, it is used instead (see
``scripts/t5x_shims/needed.py``).
"""

XMTF_JESTIMATOR_SHIM = True
