"""Minimal import shim for ``airio`` (google/airio), used only to run upstream T5X on this repo's
pinned stack where the real package cannot be installed (airio has no release on PyPI).

T5X (``t5x/utils.py``) does ``import airio.core as airio`` at import time and then only uses the
names below in ``isinstance`` checks and type annotations, to tell AirIO tasks from SeqIO ones.
Our tasks are SeqIO tasks, so with this shim every such check is False and T5X takes its SeqIO
path. It provides nothing else: an AirIO task cannot be built or run with it. When the real
``airio`` is importable, it is used instead (the launchers put this folder on PYTHONPATH only
when ``import airio.core`` fails). See docs/upstream-t5x.md.
"""

XMTF_AIRIO_SHIM = True
