"""Imports TensorFlow without its C++ start-up banner.

TensorFlow 2.21 logs through absl before ``absl::InitializeLog()`` runs, so
``TF_CPP_MIN_LOG_LEVEL`` cannot silence "All log messages before
absl::InitializeLog()", the oneDNN notice or the cudart stub line (measured:
each still prints with the variable set to 3). Those lines come from native
code writing to file descriptor 2, so the import runs with that descriptor
pointed at a temporary file; if the import fails, what it wrote is replayed
so nothing that explains a failure is lost. ``XMTF_TF_LOGS=1`` keeps the logs.
"""

from __future__ import annotations

import os
import sys
import tempfile


def import_quietly() -> None:
  """Imports ``tensorflow`` (and ``tensorflow_text``, which seqio loads) once, quietly."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if "tensorflow" in sys.modules or os.environ.get("XMTF_TF_LOGS"):
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # noqa: F401
      try:
        import tensorflow_text  # noqa: F401
      except ImportError:  # optional here; seqio reports it where it is needed
        pass
    except BaseException:
      os.dup2(saved, 2)
      captured.seek(0)
      os.write(2, captured.read())
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)
