#!/usr/bin/env bash
# Set up (with test extras) and run lint plus the whole test suite.
# Extra arguments go to pytest. "No tests collected" (exit 5) is a failure.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/install.sh test || exit 1
export TF_CPP_MIN_LOG_LEVEL=3 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
echo "[test] ruff check ."
.venv/bin/ruff check . || exit 1
echo "[test] pytest"
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
