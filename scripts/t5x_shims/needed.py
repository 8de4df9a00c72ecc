"""Print the import-shim folders (colon-separated) that this interpreter needs to import T5X.

  PYTHONPATH=$T5X_DIR:$XMTF_DIR:$(python scripts/t5x_shims/needed.py) python -m t5x.train ...

Upstream T5X imports two packages that cannot be pip-installed on our pinned stack: ``airio``
(not on PyPI; T5X's setup.py installs it from git) and ``jestimator`` (PyPI's 0.3.3 fails on jax
>= 0.5; T5X installs git HEAD). Each shim folder here provides only the names T5X reads at import
time, for code paths our recipes never take (AirIO tasks, the Amos optimizer). A shim is listed
only when the real package does not import, so an installed real package is never shadowed.
Prints an empty line when nothing is needed.
"""

import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# shim folder -> modules whose import must succeed for the real package to be used
SHIMS = {
    "airio": ("airio.core",),
    "jestimator": ("jestimator.amos", "jestimator.amos_helper"),
}


def needed() -> list[str]:
  out = []
  for name, modules in SHIMS.items():
    try:
      for m in modules:
        importlib.import_module(m)
    except Exception:  # ImportError, or an old release failing inside its own imports
      out.append(os.path.join(HERE, name))
    for m in list(sys.modules):  # a half-imported real package must not linger
      if m == name or m.startswith(name + "."):
        del sys.modules[m]
  return out


if __name__ == "__main__":
  print(":".join(needed()))
