#!/bin/bash
# Issue 23's estimator comparison on the lent GPU machine, started by detach.sh (it runs past one call):
#   bash scripts/device/detach.sh est scripts/device/estimators.sh SECONDS TUNE_DIR
# Every zeroth-order estimator (zo-b64t-*: batch 64, q 1, torch engine on CUDA) gets the same forward
# tokens a task (about STEPS_<task> P-RGE steps); first-order Adam on the same adapter (fo-qv, batch
# 16) gets an eighth of them, as many steps as P-RGE; zero-shot is scored on the same engine. Tuning
# splits only (TUNE_DIR: bench_accuracy's tuning_split files), seeds 0 1 2, one process a row, the rows
# sharing the GPU. Beside them, issue 24's lr check: P-RGE at 4000 steps on SST-2, lr 1e-2 and 5e-3.
# Everything stops after SECONDS; finished rows are in $OUT/{zo,fo}-rows.jsonl, the lr runs'
# evaluations in $OUT/lr-*.jsonl. TF32 matmuls (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE): 10 mantissa bits,
# more than the 8-bit activations llama.cpp's quantized matmuls compute with.
# Measured (bench/estimators-tuning.md): the 15 processes below shared the GPU with no overlap: together
# they stepped about as fast as one row alone (SST-2: 1.38 s a step each against 0.09-0.12 alone), so
# the whole comparison needs ~1 hour of one H200 at this engine's speed; run fewer rows at once.
LIMIT=$1; T=$2
. scripts/device/model.sh smollm2-135m
export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1
M=/root/smollm2-135m.gguf
python3 -c "
import time, torch
a = torch.randn(8192, 8192, device='cuda'); torch.mm(a, a); torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): torch.mm(a, a)
torch.cuda.synchronize(); print(f'fp32 matmul {10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12:.0f} TFLOP/s')
" > $OUT/tf32.txt 2>&1
# P-RGE's forward tokens a step (2 x 64 rows) on the llama engine's tokenizer: SST-2 2,180, WiC 5,080,
# RTE 10,810, CB 12,180 (bench/accuracy-6min.json); 1000 steps of SST-2, 400 of WiC, 300 of RTE and CB.
ZO="sst2=2.18e6 wic=2.03e6 rte=3.24e6 cb=3.65e6"
FO="sst2=2.725e5 wic=2.54e5 rte=4.05e5 cb=4.5625e5"
COMMON=(--tuning-only --tasks sst2 wic rte cb --models smollm2-135m=$M --seeds 0 1 2 --evals 5 --threads 1
        --zero-shot-engine torch --torch-args "--device cuda" --splits $T)
timeout $LIMIT python3 scripts/bench/bench_accuracy.py "${COMMON[@]}" --jobs 10 --budget-tokens $ZO \
  --methods zo-b64t zo-b64t-hizoo zo-b64t-lozo zo-b64t-conmezo --work /root/w-zo --out $OUT/zo > $OUT/zo.log 2>&1 &
timeout $LIMIT python3 scripts/bench/bench_accuracy.py "${COMMON[@]}" --jobs 3 --budget-tokens $FO \
  --methods fo-qv --work /root/w-fo --out $OUT/fo > $OUT/fo.log 2>&1 &
for lr in 1e-2 5e-3; do
  timeout $LIMIT python3 -m prge_gguf train --task sst2 --valid $T/sst2-tune.tsv --model $M --engine torch \
    --device cuda --batch-size 64 --q 1 --lr $lr --steps 4000 --eval-every 400 --eval-size 500 \
    --checkpoint-every 0 --seed 0 --threads 1 --out /root/lr/lr$lr > $OUT/lr-$lr.log 2>&1 &
done
wait
for k in zo fo; do cp /root/w-$k/rows.jsonl $OUT/$k-rows.jsonl; done
for lr in 1e-2 5e-3; do grep -h eval_accuracy /root/lr/lr$lr/metrics.jsonl > $OUT/lr-$lr.jsonl; done
tail -n 3 $OUT/*.log
