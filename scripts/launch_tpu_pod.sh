#!/usr/bin/env bash
# Run one training command on every worker of an existing TPU VM pod slice (creates nothing).
#
#   scripts/launch_tpu_pod.sh [--dry_run] [--engine xmtf|t5x] TPU_NAME ZONE -- [train flags...]
#   scripts/launch_tpu_pod.sh my-v4-64 us-central2-b -- \
#       --gin_file=mt0/mt0_large_xp3.gin --gin.MODEL_DIR=\"gs://bucket/mt0_large\"
#   scripts/launch_tpu_pod.sh --engine t5x my-v4-64 us-central2-b -- \
#       --gin_file=t5x/mt0_large_xp3.gin --gin.MODEL_DIR=\"gs://bucket/mt0_large\"
#
# Each worker clones nothing of ours: it expects this repository at $REMOTE_DIR (default
# ~/xmtf-pipeline, e.g. copied with `gcloud compute tpus tpu-vm scp --worker=all`).
# --engine xmtf (default): scripts/install.sh, then `xmtf train` (our engine).
# --engine t5x: upstream T5X, cloned to $HOME/t5x at $T5X_COMMIT and pip-installed -e with [tpu]
#   into the venv $HOME/t5x-venv (README of google-research/t5x), then `python3 -m t5x.train`
#   with --gin_search_paths=<t5x clone>,<this repo>/gin and this repo on PYTHONPATH for
#   `import tasks.*` (our package is not pip-installed there: its pinned JAX stack would replace
#   T5X's). Gin files for it: gin/t5x/.
# --dry_run prints the gcloud command, then the per-worker command it runs, and exits.
# JAX detects the pod topology itself (no distributed flags needed).
set -euo pipefail
usage() { sed -n '/^set -euo/q;2,$p' "$0" >&2; exit 2; }
DRY=0
ENGINE=xmtf
while [ $# -gt 0 ]; do
  case "$1" in
    --dry_run) DRY=1; shift ;;
    --engine) [ $# -ge 2 ] || usage; ENGINE="$2"; shift 2 ;;
    --engine=*) ENGINE="${1#--engine=}"; shift ;;
    *) break ;;
  esac
done
case "$ENGINE" in
  xmtf|t5x) ;;
  *) echo "launch_tpu_pod.sh: --engine must be 'xmtf' or 't5x', got '$ENGINE'" >&2; exit 2 ;;
esac
if [ $# -lt 3 ] || [ "$3" != "--" ]; then usage; fi
TPU="$1"; ZONE="$2"; shift 3
REMOTE_DIR="${REMOTE_DIR:-~/xmtf-pipeline}"
# The google-research/t5x commit whose gin files and sources gin/t5x/upstream_names.json was read
# from (its pinned_commit). T5X's setup.py installs flax, clu and seqio from their git HEADs, so an
# old pin can fail to install or import; then set T5X_COMMIT=origin/main (or a newer commit).
T5X_COMMIT="${T5X_COMMIT:-0183fb0931fc44c7b974ea1e7f973cb5b2a7203a}"
TRAIN_ARGS=$(printf '%q ' "$@")
if [ "$ENGINE" = xmtf ]; then
  REMOTE="cd $REMOTE_DIR && XMTF_JAX_EXTRA=tpu bash scripts/install.sh && TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/xmtf train $TRAIN_ARGS"
else
  # $HOME, $PWD and the T5X_* variables below are expanded by the worker's shell.
  REMOTE="cd $REMOTE_DIR && T5X_DIR=\$HOME/t5x && T5X_VENV=\$HOME/t5x-venv"
  REMOTE+=" && { [ -d \"\$T5X_DIR/.git\" ] || git clone --quiet https://github.com/google-research/t5x \"\$T5X_DIR\"; }"
  REMOTE+=" && git -C \"\$T5X_DIR\" fetch --quiet origin && git -C \"\$T5X_DIR\" checkout --quiet $(printf '%q' "$T5X_COMMIT")"
  REMOTE+=" && { [ -x \"\$T5X_VENV/bin/python\" ] || python3 -m venv \"\$T5X_VENV\"; }"
  REMOTE+=" && \"\$T5X_VENV/bin/python\" -m pip install --quiet -e \"\${T5X_DIR}[tpu]\" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
  REMOTE+=" && PYTHONPATH=\"\$PWD\" TF_CPP_MIN_LOG_LEVEL=3 \"\$T5X_VENV/bin/python\" -m t5x.train --gin_search_paths=\"\$T5X_DIR,\$PWD/gin\" $TRAIN_ARGS"
fi
CMD=(gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$REMOTE")
if [ "$DRY" = 1 ]; then
  printf '%q ' "${CMD[@]}"; echo
  echo "# per-worker command (engine $ENGINE):"
  echo "$REMOTE"
  exit 0
fi
exec "${CMD[@]}"
