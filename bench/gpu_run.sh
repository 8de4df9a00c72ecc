#!/usr/bin/env bash
# Issue 13 on one lent GPU, in one call (device tool), under 9 minutes:
#   run(command="bash bench/gpu_run.sh", timeout_s=600)
# Needs only what the GPU machines carry (jax[cuda], flax, optax, torch, transformers; no TF,
# seqio or gin). In this order, each step under a hard time limit, so it cannot come back
# empty: device and versions; the profile tables (mt5_small, mt5_large: where a step's time
# goes); one headline row each for ours (every lever), the T5X defaults, HF torch.compile and
# HF eager; the --check numerics on a budget of their own (CHECK_S, reserved from the start,
# so neither the rows before can eat it nor it the rows after); then everything else while
# time remains. Every row is appended to $OUT/rows.jsonl as it finishes (failed ones with
# their reason); logs and profile JSON under $OUT.
# Smaller values smoke-test it on a CPU (bench/NOTES.md): MODEL SMALL_MODEL CHECK_MODEL INPUTS
# TARGETS BATCH HF_BATCH HF_EAGER_BATCH ATTENTION BUDGET_S CHECK_S ROW_S.
set -uo pipefail
OUT=${OUT:-/tmp/xmtf_bench}
mkdir -p "$OUT"
export PYTHONPATH=$PWD TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
PY=${PYTHON:-python3}
MODEL=${MODEL:-mt5_large} SMALL_MODEL=${SMALL_MODEL:-mt5_small}
INPUTS=${INPUTS:-1024} TARGETS=${TARGETS:-256} BATCH=${BATCH:-32}
BUDGET_S=${BUDGET_S:-530} CHECK_S=${CHECK_S:-60} ROW_S=${ROW_S:-80}
START=$SECONDS
ROWS="$OUT/rows.jsonl"
CHECK_DONE=0
left() { echo $(( BUDGET_S - (SECONDS - START) )); }

# step NAME SECONDS CMD...: runs CMD for at most SECONDS (less if the budget is short;
# the check's budget stays reserved until it has run), logs to $OUT/NAME.log.
step() {
  local name=$1 want=$2 t
  shift 2
  local avail=$(( $(left) - 5 - (CHECK_DONE ? 0 : CHECK_S) ))
  t=$(( want < avail ? want : avail ))
  if [ "$t" -lt 20 ]; then  # a row needs a process start and a compile
    echo "[$name] skipped: $(left) s of the budget left" | tee -a "$OUT/skipped.txt"
    return
  fi
  echo "== $name (limit ${t} s; $(( SECONDS - START )) s elapsed)"
  STEP_T=$t timeout -k 5 "$t" "$@" 2>&1 | grep -v '^I0000\|^W0000' | tee "$OUT/$name.log"
  if [ "${PIPESTATUS[0]}" = 124 ]; then
    echo "{\"engine\": \"$name\", \"failed\": \"hard limit of ${t} s\"}" >> "$ROWS"
    echo "[$name] FAILED: hard limit of ${t} s"
  fi
}
# bench ARGS...: one `xmtf bench train` whose rows each get the step's limit minus a margin.
bench() {
  $PY -m xmtf_pipeline.tools.bench train --model "$MODEL" --inputs "$INPUTS" --targets "$TARGETS" \
    --ceiling "$CEILING" --jsonl "$ROWS" --timeout $(( STEP_T - 8 )) "$@"
}
export -f bench
BEST="--scan --remat dots_no_batch --loss-chunk 64 --head-dtype bfloat16 --dropout 0"
BEST="$BEST --attention ${ATTENTION:-cudnn} --xla-flags=--xla_gpu_enable_triton_gemm=false"

# 1. Device and versions, and the bf16 matmul ceiling every row's MFU uses.
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
  timeout 60 $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__, jax.devices())"
  timeout 30 $PY -c "import torch, transformers as t; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'transformers', t.__version__)"
} 2>&1 | grep -v '^I0000\|^W0000' | tee "$OUT/device.txt"
CEILING=$(timeout 60 $PY -c "from xmtf_pipeline.tools.bench import matmul_ceiling_tflops as c; \
print(c())" 2>/dev/null | tail -1)
CEILING=${CEILING:-0}
echo "bf16 matmul ceiling: $CEILING TFLOP/s" | tee -a "$OUT/device.txt"
export CEILING MODEL INPUTS TARGETS ROWS PY

# 2. Profiles: the top XLA ops of one step, every lever on.
step profile_small 45 bash -c "bench --model $SMALL_MODEL --batch $BATCH $BEST --name 'all levers' \
  --steps 1 --profile $OUT/profile_small"
step profile_large 75 bash -c "bench --batch $BATCH $BEST --name 'all levers' --steps 1 \
  --profile $OUT/profile_large"

# 3. Headline: ours with every lever, T5X defaults, HF torch.compile, HF eager.
step ours_best "$ROW_S" bash -c "bench --batch $BATCH $BEST --name 'all levers' --steps 5"
step t5x_defaults 90 bash -c "bench --batch $BATCH --steps 5 --ladder --ladder-rows 0"
step hf_compile "$ROW_S" bash -c "bench --no-ours --vs-hf --hf-batch ${HF_BATCH:-32} \
  --hf-eager-batch 0 --steps 5"
step hf_eager 60 bash -c "bench --no-ours --vs-hf --hf-batch 0 \
  --hf-eager-batch ${HF_EAGER_BATCH:-8} --steps 5"

# 4. Numerics: each lever against the plain path on the device, bf16 first.
CHECK_BUDGET=$CHECK_S CHECK_S=0
step check "$CHECK_BUDGET" bash -c "bench --only-check --check-model ${CHECK_MODEL:-mt5_small} \
  --check-dtypes bfloat16,float32 --inputs $(( INPUTS / 2 )) --targets $(( TARGETS / 2 )) \
  --json $OUT/check.json"
CHECK_DONE=1

# 5. Everything else, most informative first: mT0-shaped rows, single levers, larger batches.
step ours_best_mt0 "$ROW_S" bash -c "bench --batch $BATCH $BEST --name 'all levers' --steps 5 \
  --data mt0"
step t5x_defaults_mt0 90 bash -c "bench --batch $BATCH --steps 5 --data mt0 --ladder \
  --ladder-rows 0"
for row in 1 3 4 2 5 6; do
  step "ladder_$row" "$ROW_S" bash -c "bench --batch $BATCH --steps 5 --ladder --ladder-rows $row"
done
step ours_best_2x "$ROW_S" bash -c "bench --batch $(( 2 * BATCH )) $BEST --name 'all levers' \
  --steps 5"
step hf_compile_mt0 "$ROW_S" bash -c "bench --no-ours --vs-hf --hf-batch ${HF_BATCH:-32} \
  --hf-eager-batch 0 --steps 5 --data mt0"
echo "wall ${SECONDS}s; rows in $ROWS"
