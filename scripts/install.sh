#!/usr/bin/env bash
# Creates .venv if missing and installs the package with every version pinned.
# Usage: scripts/install.sh [EXTRAS]   e.g. scripts/install.sh test
# pip (not uv/poetry) so torch==2.13.0 resolves to the local CPU wheel.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EXTRAS="${1:-}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[$EXTRAS]"
STAMP=".venv/.xmtf-install-$(cat setup.cfg pyproject.toml constraints.txt scripts/install.sh | sha256sum | cut -c1-16)-${EXTRAS:-base}${XMTF_JAX_EXTRA:+-$XMTF_JAX_EXTRA}"
if [ -f "$STAMP" ]; then
  echo "[install] .venv is up to date ($SPEC)"
  exit 0
fi
echo "[install] installing $SPEC with constraints.txt (first time: a few minutes)"
# pip itself is pinned too. The venv's own pip is whatever this Python bundles (3.11.7: 23.2.1),
# whose resolver alone (a --dry-run of the base packages) took 43 s (31 CPU-s); 26.3: 25 (13).
# Measured on 2 cores, fresh venv: pip for the base packages 63 -> 42 s, the test extras then
# 39 -> 17 s; this whole script 99 -> 61 s and 49 -> 31 s. The upgrade itself takes 2 s.
PIP_VERSION=26.3
if [ "$(.venv/bin/python -m pip --version | cut -d' ' -f2)" != "$PIP_VERSION" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "pip==$PIP_VERSION"
fi
# pip's own byte-compiling is serial (76 of 169 s on 2 cores), so it is skipped and done below on
# every core instead.
# The editable build needs pyproject's build-system pins. Where the venv already has exactly those
# (later installs: the base packages bring wheel, torch setuptools), pip builds in the venv instead
# of setting up an isolated build env first: 15 -> 8 s for a pip run with nothing new to install.
ISOLATION=()
if .venv/bin/python -c '
import importlib.metadata as m, tomllib
for pin in tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]:
  name, version = pin.split("==")
  assert m.version(name) == version' 2>/dev/null; then
  ISOLATION=(--no-build-isolation)
fi
# -qq: errors only. pip 26 passes on setuptools' notice about editable installs at -q.
.venv/bin/python -m pip install -qq --no-compile --disable-pip-version-check "${ISOLATION[@]}" \
  -c constraints.txt -e "$SPEC"
# Accelerators: XMTF_JAX_EXTRA=tpu (TPU VMs) or cuda12 (NVIDIA GPUs) adds JAX's backend plugin.
if [ -n "${XMTF_JAX_EXTRA:-}" ]; then
  .venv/bin/python -m pip install --quiet "jax[${XMTF_JAX_EXTRA}]==0.10.2"
fi
# Byte-compile the installed packages. Not optional: where PYTHONDONTWRITEBYTECODE is set (this
# project's development machines set it) Python never writes .pyc files itself, so without them
# every process compiles TensorFlow's, JAX's and seqio's sources again: `import seqio` then costs
# 22 s instead of 7 s, in every CLI call, demo and test subprocess.
# Skipped, a third of the 20,700 files, none of which the pipeline or its tests import (checked
# against sys.modules after importing them all): the model zoo of transformers but for mT5/T5 and
# the auto classes, the dataset builders of tensorflow-datasets, and packages' own tests/ folders.
# A skipped module still imports, only uncompiled. Base and test extras: 45 -> 30 s on 2 cores.
SKIP='/site-packages/(transformers/models/(?!(auto|encoder_decoder|mt5|t5)/)[^/]+/|tensorflow_datasets/(?!(core|proto|rlds)/)[^/]+/)|/tests/'
echo "[install] byte-compiling the installed packages"
.venv/bin/python -m compileall -q -j 0 -x "$SKIP" \
  "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null \
  || true  # a few packages ship files that are not Python 3; those stay uncompiled
touch "$STAMP"
