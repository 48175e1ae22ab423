#!/bin/bash
# Issue 23's estimator comparison on the lent GPU machine, started by detach.sh (it runs past one call):
#   bash scripts/device/detach.sh est [METHODS="..."] [SEEDS="..."] [SCALE=0.6] scripts/device/estimators.sh SECONDS TUNE_DIR
# Every zeroth-order row (METHODS, default P-RGE and ConMeZO as zo-b64t-*: batch 64, q 1, torch engine on
# CUDA) gets the same forward tokens a task (SCALE x about 1000 P-RGE steps of SST-2, 400 of WiC, 300 of
# RTE and CB); first-order Adam on the same adapter (fo-qv, batch 16) gets an eighth of them, as many steps
# as P-RGE. Zero-shot is scored on the same engine. Tuning splits only (TUNE_DIR: bench_accuracy's
# tuning_split files), SEEDS (default 0 1 2), one process a row. Everything stops after SECONDS; then
# $OUT/w-{zo,fo} hold each bench's rows.jsonl (finished rows) and every run's metrics.jsonl, stopped ones
# too (scripts/bench/report_estimators.py reads them at equal forward tokens). TF32 matmuls (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE): 10 mantissa bits,
# more than the 8-bit activations llama.cpp's quantized matmuls compute with.
# The rows share the GPU under CUDA's multi-process service (mps.sh).
LIMIT=$1; T=$2
METHODS=${METHODS:-"zo-b64t zo-b64t-conmezo"}; SEEDS=${SEEDS:-"0 1 2"}; SCALE=${SCALE:-1}
. scripts/device/model.sh smollm2-135m
export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
M=/root/smollm2-135m.gguf
. scripts/device/mps.sh
# P-RGE's forward tokens a step (2 x 64 rows) on the llama engine's tokenizer: SST-2 2,180, WiC 5,080,
# RTE 10,810, CB 12,180 (bench/accuracy-6min.json).
budget() { for kv in "$@"; do echo -n "${kv%%=*}=$(python3 -c "print(${kv#*=} * $SCALE)") "; done; }
ZO=$(budget sst2=2.18e6 wic=2.03e6 rte=3.24e6 cb=3.65e6)
FO=$(budget sst2=2.725e5 wic=2.54e5 rte=4.05e5 cb=4.5625e5)
COMMON=(--tuning-only --tasks sst2 wic rte cb --models smollm2-135m=$M --seeds $SEEDS --evals 5 --threads 1
        --zero-shot-engine torch --torch-args "--device cuda" --splits $T)
timeout $LIMIT python3 scripts/bench/bench_accuracy.py "${COMMON[@]}" --jobs 12 --budget-tokens $ZO \
  --methods $METHODS --work /root/w-zo --out $OUT/zo > $OUT/zo.log 2>&1 &
timeout $LIMIT python3 scripts/bench/bench_accuracy.py "${COMMON[@]}" --jobs 3 --budget-tokens $FO \
  --methods fo-qv --work /root/w-fo --out $OUT/fo > $OUT/fo.log 2>&1 &
wait
for k in zo fo; do
  mkdir -p $OUT/w-$k; cp /root/w-$k/rows.jsonl $OUT/w-$k/
  for run in /root/w-$k/run-*; do mkdir -p $OUT/w-$k/${run##*/}; cp $run/metrics.jsonl $OUT/w-$k/${run##*/}/; done
done
tail -n 3 $OUT/*.log
