#!/usr/bin/env bash
# Eval job: mT0's held-out zero-shot suite (rank classification) on one checkpoint.
#
#   scripts/eval.sh [--engine xmtf|t5x] [--launcher local|tpu_pod|slurm] [--tpu NAME --zone ZONE]
#                   [--dry_run] MODEL CHECKPOINT_PATH OUTPUT_DIR [SUITE] [-- extra flags]
#   scripts/eval.sh mt5_large /runs/mt0/checkpoint_1025000 /evals/mt0_large heldout \
#       -- --gin.DATA_DIR=\"/data/heldout\"
#   scripts/eval.sh --engine t5x --launcher tpu_pod --tpu my-v4-64 --zone us-central2-b \
#       mt5_large gs://b/mt0_large/checkpoint_1025000 gs://b/mt0_large/eval
#
# MODEL: mt5_small|base|large|xl|xxl (xmtf: also any gin/models/*.gin). SUITE (default heldout):
# heldout, heldout_l1, heldout_bundled, heldout_<dataset> or one task (tasks/heldout.py).
# --engine xmtf (default): `xmtf eval` with gin/models/MODEL.gin + gin/runs/eval.gin; it writes
#   OUTPUT_DIR/results.json, results.md, model_index.yaml, charts/.
# --engine t5x: upstream `python -m t5x.eval` with t5x/examples/t5/mt5/<size>.gin +
#   gin/t5x/runs/eval_heldout.gin, then scripts/t5x_eval_report.py OUTPUT_DIR (the same report
#   files from T5X's metrics). seqio evaluates one split per run: for heldout and heldout_l1 a
#   second run evaluates split 'test' (XWinograd); heldout_xwinograd* runs on 'test' only.
#   Local runs need T5X_DIR (a google-research/t5x clone) and T5X's packages in T5X_PYTHON
#   (default .venv/bin/python, see docs/upstream-t5x.md); shims from scripts/t5x_shims.
# --launcher local (default) runs here. tpu_pod: scripts/launch_tpu_pod.sh --job eval on every
#   worker of TPU NAME (then, for t5x, the report here). slurm: xmtf through
#   scripts/launch_slurm.sh --job eval, one process per node with the multi-process flags (every
#   process feeds its devices' rows, process 0 writes); t5x as one `srun --ntasks=1` process
#   (T5X's eval.py does not initialize multi-process GPU runs).
# Extra flags go to the eval command (gin bindings: --gin.NAME=VALUE). --dry_run (or DRY_RUN=1)
# prints the commands instead of running them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '/^set -euo/q;2,$p' "$0" >&2; exit 2; }
ENGINE=xmtf; LAUNCHER=local; TPU=""; ZONE=""; DRY="${DRY_RUN:-0}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry_run) DRY=1; shift ;;
    --engine) [ $# -ge 2 ] || usage; ENGINE="$2"; shift 2 ;;
    --engine=*) ENGINE="${1#--engine=}"; shift ;;
    --launcher) [ $# -ge 2 ] || usage; LAUNCHER="$2"; shift 2 ;;
    --launcher=*) LAUNCHER="${1#--launcher=}"; shift ;;
    --tpu) [ $# -ge 2 ] || usage; TPU="$2"; shift 2 ;;
    --zone) [ $# -ge 2 ] || usage; ZONE="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) break ;;
  esac
done
die() { echo "eval.sh: $*" >&2; exit 2; }
case "$ENGINE" in xmtf|t5x) ;; *) die "--engine must be 'xmtf' or 't5x', got '$ENGINE'" ;; esac
case "$LAUNCHER" in local|tpu_pod|slurm) ;;
  *) die "--launcher must be 'local', 'tpu_pod' or 'slurm', got '$LAUNCHER'" ;; esac
if [ "$LAUNCHER" = tpu_pod ] && { [ -z "$TPU" ] || [ -z "$ZONE" ]; }; then
  die "--launcher tpu_pod needs --tpu NAME and --zone ZONE"
fi
[ $# -ge 3 ] || usage
MODEL="$1"; CKPT="$2"; OUT="$3"; shift 3
SUITE=heldout
if [ $# -gt 0 ] && [ "$1" != "--" ]; then SUITE="$1"; shift; fi
if [ $# -gt 0 ]; then [ "$1" = "--" ] || usage; shift; fi
EXTRA=("$@")
COMMON=("--gin.CHECKPOINT_PATH=\"${CKPT}\"" "--gin.EVAL_OUTPUT_DIR=\"${OUT}\""
        "--gin.MIXTURE_OR_TASK_NAME=\"${SUITE}\"")

show() { printf '%q ' "$@"; echo; }
# run CMD...: print it (dry run) or run it, stopping at the first failure.
run() { if [ "$DRY" = 1 ]; then show "$@"; else "$@"; fi; }
dry_flag() { [ "$DRY" = 1 ] && echo --dry_run || true; }

if [ "$ENGINE" = xmtf ]; then
  ARGS=("--gin_file=models/${MODEL}.gin" "--gin_file=runs/eval.gin" "${COMMON[@]}" "${EXTRA[@]}")
  case "$LAUNCHER" in
    local)
      CMD=("$ROOT/.venv/bin/xmtf" eval "${ARGS[@]}")
      if [ "$DRY" = 1 ]; then show "${CMD[@]}"; exit 0; fi
      source "$ROOT/scripts/_run_xmtf.sh"
      run_xmtf "${CMD[@]}" ;;
    tpu_pod) exec bash "$ROOT/scripts/launch_tpu_pod.sh" $(dry_flag) --job eval --engine xmtf \
               "$TPU" "$ZONE" -- "${ARGS[@]}" ;;
    slurm) exec bash "$ROOT/scripts/launch_slurm.sh" $(dry_flag) --job eval -- "${ARGS[@]}" ;;
  esac
fi

# --engine t5x
SIZE="${MODEL#mt5_}"
case "$SIZE" in small|base|large|xl|xxl) ;;
  *) die "--engine t5x takes MODEL mt5_small|mt5_base|mt5_large|mt5_xl|mt5_xxl (upstream's t5x/examples/t5/mt5/<size>.gin), got '$MODEL'" ;;
esac
case "$SUITE" in
  heldout|heldout_l1) SPLITS=(validation test) ;;
  heldout_xwinograd*) SPLITS=(test) ;;
  *,*) die "--engine t5x evaluates one registered SeqIO task or mixture, not a list: '$SUITE'" ;;
  *) SPLITS=(validation) ;;
esac
# Command-line bindings are parsed apart from the gin files: the split binding needs its import.
ARGS=("--gin_file=t5x/examples/t5/mt5/${SIZE}.gin" "--gin_file=t5x/runs/eval_heldout.gin"
      "--gin_bindings=from __gin__ import dynamic_registration"
      "--gin_bindings=from t5x import utils" "${COMMON[@]}")
REPORT=("$ROOT/.venv/bin/python" "$ROOT/scripts/t5x_eval_report.py" "$OUT")

case "$LAUNCHER" in
  local)
    T5X_DIR="${T5X_DIR:-}"
    if [ -z "$T5X_DIR" ]; then
      [ "$DRY" = 1 ] || die "set T5X_DIR to a google-research/t5x clone (docs/upstream-t5x.md)"
      T5X_DIR='$T5X_DIR'
    fi
    PY="${T5X_PYTHON:-$ROOT/.venv/bin/python}"
    if [ "$DRY" = 1 ]; then SHIMS='$('"$PY"' scripts/t5x_shims/needed.py)'
    else SHIMS="$("$PY" "$ROOT/scripts/t5x_shims/needed.py")"; fi
    PYPATH="$T5X_DIR:$ROOT${SHIMS:+:$SHIMS}${PYTHONPATH:+:$PYTHONPATH}"
    for split in "${SPLITS[@]}"; do
      run env "PYTHONPATH=$PYPATH" "TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}" "$PY" -m t5x.eval \
        "--gin_search_paths=$T5X_DIR,$ROOT/gin" "${ARGS[@]}" \
        "--gin.utils.DatasetConfig.split=\"$split\"" "${EXTRA[@]}"
    done
    run env "TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}" "${REPORT[@]}" ;;
  tpu_pod)
    for split in "${SPLITS[@]}"; do  # the launcher prints its commands itself on --dry_run
      bash "$ROOT/scripts/launch_tpu_pod.sh" $(dry_flag) --job eval --engine t5x "$TPU" "$ZONE" -- \
        "${ARGS[@]}" "--gin.utils.DatasetConfig.split=\"$split\"" "${EXTRA[@]}"
    done
    run "${REPORT[@]}" ;;
  slurm)
    LOCAL=(bash "$ROOT/scripts/eval.sh" --engine t5x "$MODEL" "$CKPT" "$OUT" "$SUITE" -- "${EXTRA[@]}")
    run srun --ntasks=1 --nodes=1 "${LOCAL[@]}" ;;
esac
