#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node, all GPUs of a node per process.
#
#   sbatch --nodes=4 --gpus-per-node=8 scripts/launch_slurm.sh -- [xmtf train flags...]
#   scripts/launch_slurm.sh --dry_run -- --gin_file=mt0/mt0_xl_xp3.gin --gin.MODEL_DIR=\"/ckpt/xl\"
#   scripts/launch_slurm.sh [--dry_run] [--job train|eval|infer] -- [xmtf JOB flags...]
#   (--job eval: scripts/eval.sh --launcher slurm builds its flags; default job train; eval and
#   infer run one process per node too, on the whole mesh)
#
# Process 0's host is the jax.distributed coordinator (port $COORDINATOR_PORT, default 29500);
# each task passes T5X's --multiprocess_gpu --coordinator_address --process_count --process_index.
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
DRY=0
JOB=train
while [ $# -gt 0 ]; do
  case "$1" in
    --dry_run) DRY=1; shift ;;
    --job) [ $# -ge 2 ] || { sed -n '2,12p' "$0" >&2; exit 2; }; JOB="$2"; shift 2 ;;
    --job=*) JOB="${1#--job=}"; shift ;;
    *) break ;;
  esac
done
case "$JOB" in
  train|eval|infer) ;;
  *) echo "launch_slurm.sh: --job must be 'train', 'eval' or 'infer', got '$JOB'" >&2; exit 2 ;;
esac
if [ "${1:-}" != "--" ]; then sed -n '2,12p' "$0" >&2; exit 2; fi
shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${COORDINATOR_PORT:-29500}"
NODES="${SLURM_JOB_NODELIST:-localhost}"
HEAD=$(scontrol show hostnames "$NODES" 2>/dev/null | head -n1 || echo localhost)
NTASKS="${SLURM_NTASKS:-1}"
# One process per node for every job: xmtf train, eval and infer all start jax.distributed from
# these flags (eval and infer: each process feeds its devices' rows, process 0 writes).
DIST="--multiprocess_gpu --coordinator_address=$HEAD:$PORT --process_count=$NTASKS --process_index=\$SLURM_PROCID "
TASK=(bash -c "XMTF_JAX_EXTRA=\${XMTF_JAX_EXTRA:-cuda12} bash '$ROOT/scripts/install.sh' && TF_CPP_MIN_LOG_LEVEL=3 '$ROOT/.venv/bin/xmtf' $JOB \
$DIST$(printf '%q ' "$@")")
CMD=(srun --ntasks="$NTASKS" --ntasks-per-node=1 "${TASK[@]}")
if [ "$DRY" = 1 ]; then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
exec "${CMD[@]}"
