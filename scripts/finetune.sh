#!/usr/bin/env bash
# Local finetune launcher (CPU or one GPU host): wraps `xmtf train` with the finetune run config.
#
#   scripts/finetune.sh MODEL MODEL_DIR MIXTURE TRAIN_STEPS [INITIAL_CHECKPOINT_PATH] [-- extra flags]
#   scripts/finetune.sh mt5_large /runs/mt0 xp3 1_025_000 /ckpts/mt5_large/checkpoint_1000000 \
#       -- --gin.BATCH_SIZE=64 --gin.NUM_MICROBATCHES=8
#
# Feature lengths default to mT0's 1024/1024; override with --gin.TASK_FEATURE_LENGTHS=...
# DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 4 ]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
MODEL="$1"; MODEL_DIR="$2"; MIXTURE="$3"; STEPS="$4"; shift 4
INIT="None"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then INIT="\"$1\""; shift; fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
CMD=("$ROOT/.venv/bin/xmtf" train
  "--gin_file=models/${MODEL}.gin" "--gin_file=runs/finetune.gin"
  "--gin.MODEL_DIR=\"${MODEL_DIR}\"" "--gin.MIXTURE_OR_TASK_NAME=\"${MIXTURE}\""
  "--gin.MIXTURE_OR_TASK_MODULE=\"tasks.xp3\""
  "--gin.TASK_FEATURE_LENGTHS={'inputs': 1024, 'targets': 1024}"
  "--gin.TRAIN_STEPS=${STEPS}" "--gin.INITIAL_CHECKPOINT_PATH=${INIT}" "$@")
source "$ROOT/scripts/_run_xmtf.sh"
run_xmtf "${CMD[@]}"
