#!/usr/bin/env bash
# Run one training command on every worker of an existing TPU VM pod slice (creates nothing).
#
#   scripts/launch_tpu_pod.sh [--dry_run] [--engine xmtf|t5x] [--job train|eval|infer] TPU_NAME ZONE \
#       -- [flags of the job...]
#   scripts/launch_tpu_pod.sh my-v4-64 us-central2-b -- \
#       --gin_file=mt0/mt0_large_xp3.gin --gin.MODEL_DIR=\"gs://bucket/mt0_large\"
#   scripts/launch_tpu_pod.sh --engine t5x my-v4-64 us-central2-b -- \
#       --gin_file=t5x/mt0_large_xp3.gin --gin.MODEL_DIR=\"gs://bucket/mt0_large\"
#
# Each worker clones nothing of ours: it expects this repository at $REMOTE_DIR (default
# ~/xmtf-pipeline, e.g. copied with `gcloud compute tpus tpu-vm scp --worker=all`).
# --engine xmtf (default): scripts/install.sh, then `xmtf train` (our engine).
# --engine t5x: upstream T5X, cloned to $HOME/t5x at $T5X_COMMIT, then `python -m t5x.train`
#   with --gin_search_paths=<t5x clone>,<this repo>/gin and this repo on PYTHONPATH for
#   `import tasks.*`. Gin files for it: gin/t5x/. T5X_STACK picks the Python packages:
#   t5x (default): T5X's own install, pip install -e "<clone>[tpu]" into the venv $HOME/t5x-venv
#     (README of google-research/t5x). Its setup.py installs airio and jestimator from git
#     (github.com/google/airio, github.com/google-research/jestimator) and flax, clu, optax and
#     seqio from their git HEADs; our package is not installed there.
#   pinned: our pinned venv (scripts/install.sh with jax[tpu]) plus scripts/t5x_requirements.txt
#     (--no-deps), T5X from the clone on PYTHONPATH: the combination verified by running
#     gin/t5x/mt0_small_xp3.gin (docs/upstream-t5x.md, tests/test_upstream_t5x.py).
#   Either way scripts/t5x_shims/needed.py adds import shims for airio and jestimator to
#   PYTHONPATH only if the real package does not import (airio has no PyPI release; PyPI's
#   jestimator 0.3.3 fails on our JAX); T5X imports them, our recipes use neither.
# --job (default train) picks the job: `xmtf train|eval|infer` or `python -m t5x.train|eval|infer`
#   (eval: scripts/eval.sh --launcher tpu_pod builds its flags; gin/runs/ and gin/t5x/runs/).
# --dry_run prints the gcloud command, then the per-worker command it runs, and exits.
# JAX detects the pod topology itself (no distributed flags needed).
set -euo pipefail
usage() { sed -n '/^set -euo/q;2,$p' "$0" >&2; exit 2; }
DRY=0
ENGINE=xmtf
JOB=train
while [ $# -gt 0 ]; do
  case "$1" in
    --dry_run) DRY=1; shift ;;
    --job) [ $# -ge 2 ] || usage; JOB="$2"; shift 2 ;;
    --job=*) JOB="${1#--job=}"; shift ;;
    --engine) [ $# -ge 2 ] || usage; ENGINE="$2"; shift 2 ;;
    --engine=*) ENGINE="${1#--engine=}"; shift ;;
    *) break ;;
  esac
done
case "$ENGINE" in
  xmtf|t5x) ;;
  *) echo "launch_tpu_pod.sh: --engine must be 'xmtf' or 't5x', got '$ENGINE'" >&2; exit 2 ;;
esac
case "$JOB" in
  train|eval|infer) ;;
  *) echo "launch_tpu_pod.sh: --job must be 'train', 'eval' or 'infer', got '$JOB'" >&2; exit 2 ;;
esac
if [ $# -lt 3 ] || [ "$3" != "--" ]; then usage; fi
TPU="$1"; ZONE="$2"; shift 3
REMOTE_DIR="${REMOTE_DIR:-~/xmtf-pipeline}"
# The google-research/t5x commit (main, 2026-04-21) at which every name of
# gin/t5x/upstream_names.json was checked (its pinned_commit) and whose `t5x.train` ran
# gin/t5x/mt0_small_xp3.gin on our pinned jax 0.10.2 / flax 0.12.8 / orbax 0.12.8 / seqio 0.0.20.
# The former pin 0183fb09 (2022) does not import on that JAX (`from jax import prng`).
T5X_COMMIT="${T5X_COMMIT:-cc342d419ec3e3e9c4bf1df33c82330cafdc1e16}"
T5X_STACK="${T5X_STACK:-t5x}"
case "$ENGINE:$T5X_STACK" in
  xmtf:*|t5x:t5x|t5x:pinned) ;;
  *) echo "launch_tpu_pod.sh: T5X_STACK must be 't5x' or 'pinned', got '$T5X_STACK'" >&2; exit 2 ;;
esac
TRAIN_ARGS=$(printf '%q ' "$@")
if [ "$ENGINE" = xmtf ]; then
  REMOTE="cd $REMOTE_DIR && XMTF_JAX_EXTRA=tpu bash scripts/install.sh && TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/xmtf $JOB $TRAIN_ARGS"
else
  # $HOME, $PWD and the T5X_* variables below are expanded by the worker's shell.
  REMOTE="cd $REMOTE_DIR && T5X_DIR=\$HOME/t5x"
  REMOTE+=" && { [ -d \"\$T5X_DIR/.git\" ] || git clone --quiet https://github.com/google-research/t5x \"\$T5X_DIR\"; }"
  REMOTE+=" && git -C \"\$T5X_DIR\" fetch --quiet origin && git -C \"\$T5X_DIR\" checkout --quiet $(printf '%q' "$T5X_COMMIT")"
  if [ "$T5X_STACK" = t5x ]; then
    REMOTE+=" && T5X_VENV=\$HOME/t5x-venv && { [ -x \"\$T5X_VENV/bin/python\" ] || python3 -m venv \"\$T5X_VENV\"; }"
    REMOTE+=" && \"\$T5X_VENV/bin/python\" -m pip install --quiet -e \"\${T5X_DIR}[tpu]\" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
    PY='"$T5X_VENV/bin/python"'; PYPATH='"$PWD"'
  else
    REMOTE+=" && XMTF_JAX_EXTRA=tpu bash scripts/install.sh"
    REMOTE+=" && .venv/bin/python -m pip install --quiet --no-deps -r scripts/t5x_requirements.txt"
    PY=.venv/bin/python; PYPATH='"$T5X_DIR:$PWD"'
  fi
  REMOTE+=" && T5X_SHIMS=\$($PY scripts/t5x_shims/needed.py)"
  REMOTE+=" && PYTHONPATH=$PYPATH\${T5X_SHIMS:+:\$T5X_SHIMS} TF_CPP_MIN_LOG_LEVEL=3 $PY -m t5x.$JOB --gin_search_paths=\"\$T5X_DIR,\$PWD/gin\" $TRAIN_ARGS"
fi
CMD=(gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$REMOTE")
if [ "$DRY" = 1 ]; then
  printf '%q ' "${CMD[@]}"; echo
  echo "# per-worker command (engine $ENGINE, job $JOB):"
  echo "$REMOTE"
  exit 0
fi
exec "${CMD[@]}"
