#!/usr/bin/env bash
# Export a checkpoint (ours, or a native T5X one) as a Hugging Face MT5 directory.
#
#   scripts/export_to_hf.sh CHECKPOINT_DIR OUTPUT_DIR [float32|bfloat16] [-- extra flags]
#   scripts/export_to_hf.sh /runs/mt0/checkpoint_1025000 /exports/mt0-large
#   scripts/export_to_hf.sh /runs/mt0/checkpoint_1025000 /exports/mt0-large-bf16 bfloat16 -- --overwrite
#
# Extra flags go to `xmtf export-hf` (--overwrite, --spm_model, --max_shard_size, --eval_results,
# --model; see `xmtf export-hf --help`). DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 2 ]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
CKPT="$1"; OUT="$2"; shift 2
DTYPE="float32"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then DTYPE="$1"; shift; fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
CMD=("$ROOT/.venv/bin/xmtf" export-hf --checkpoint_dir "$CKPT" --output_dir "$OUT" --dtype "$DTYPE" "$@")
source "$ROOT/scripts/_run_xmtf.sh"
run_xmtf "${CMD[@]}"
