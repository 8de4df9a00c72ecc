#!/usr/bin/env bash
# Run one `xmtf train` on every worker of an existing TPU VM pod slice (creates nothing).
#
#   scripts/launch_tpu_pod.sh [--dry_run] TPU_NAME ZONE -- [xmtf train flags...]
#   scripts/launch_tpu_pod.sh my-v4-64 us-central2-b -- \
#       --gin_file=mt0/mt0_large_xp3.gin --gin.MODEL_DIR=\"gs://bucket/mt0_large\"
#
# Each worker clones nothing: it expects this repository at $REMOTE_DIR (default ~/xmtf-pipeline,
# e.g. copied with `gcloud compute tpus tpu-vm scp --worker=all`), runs scripts/install.sh, then
# the same command. JAX detects the pod topology itself (jax.distributed, no flags needed).
set -euo pipefail
DRY=0
if [ "${1:-}" = "--dry_run" ]; then DRY=1; shift; fi
if [ $# -lt 3 ] || [ "$3" != "--" ]; then sed -n '2,10p' "$0" >&2; exit 2; fi
TPU="$1"; ZONE="$2"; shift 3
REMOTE_DIR="${REMOTE_DIR:-~/xmtf-pipeline}"
TRAIN_ARGS=$(printf '%q ' "$@")
REMOTE="cd $REMOTE_DIR && XMTF_JAX_EXTRA=tpu bash scripts/install.sh && TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/xmtf train $TRAIN_ARGS"
CMD=(gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$REMOTE")
if [ "$DRY" = 1 ]; then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
exec "${CMD[@]}"
