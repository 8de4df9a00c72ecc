#!/usr/bin/env bash
# Issue 8 on one lent GPU, in one call (device tool), about 9 minutes:
#   run(command="bash bench/gpu_run.sh", timeout_s=600)
# Needs only what the GPU machines carry (jax[cuda], flax, optax, torch, transformers; no TF,
# seqio or gin). Every figure is also written, as it is measured, to $OUT (JSON + logs), so a
# run cut short still returns what it got. Order = priority: the on-device numerics checks,
# the full lever ladder vs the T5X defaults vs HF torch.compile (the headline), then the
# single levers and larger batches while time remains.
set -uo pipefail
OUT=${OUT:-/tmp/xmtf_bench}
mkdir -p "$OUT"
export PYTHONPATH=$PWD TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
START=$SECONDS
left() { echo $(( ${BUDGET_S:-540} - (SECONDS - START) )); }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, flax, optax, torch, transformers as t; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, \
'transformers', t.__version__, jax.devices())"
} 2>&1 | tee "$OUT/device.txt"
# MODEL/INPUTS/TARGETS/BATCH/CHECK_MODEL: smaller values smoke-test this script on a CPU.
B="${PYTHON:-python3} -m xmtf_pipeline.bench train --model ${MODEL:-mt5_large} --inputs \
${INPUTS:-1024} --targets ${TARGETS:-256} --steps 8 --check-model ${CHECK_MODEL:-mt5_small}"
BATCH=${BATCH:-32}
# 1. Headline: numerics checks (mt5_small, 1024/256, f32 and bf16, every lever vs plain),
#    all levers (row 7), T5X defaults (row 0), HF torch.compile batch 16 and eager batch 8
#    (HF eager ran out of memory at batch 16 on an H200 in an earlier session).
timeout $(( $(left) - 10 )) $B --check --ladder --ladder-rows 7,6,0 --batch "$BATCH" \
  --vs-hf --hf-batch 16 --hf-eager-batch 8 --timeout 200 \
  --json "$OUT/headline.json" \
  2>&1 | grep -v '^I0000\|^W0000' | tee "$OUT/headline.log"
# 2. The single levers, then larger batches of the full ladder, while time remains.
if [ "$(left)" -gt 90 ]; then
  timeout $(( $(left) - 5 )) $B --ladder --ladder-rows 1,3,4,2,5 --batch "$BATCH" \
    --best-batch $((2 * BATCH)) --best-batch $((3 * BATCH)) --timeout 150 --json "$OUT/levers.json" \
    2>&1 | grep -v '^I0000\|^W0000' | tee "$OUT/levers.log"
fi
echo "wall ${SECONDS}s"
