#!/usr/bin/env bash
# The main job: set up (first run only) and run `xmtf demo` on the embedded default.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/install.sh"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
exec "$ROOT/.venv/bin/xmtf" demo "$@"
