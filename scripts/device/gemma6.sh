#!/bin/bash
# Issue 23's GPU 6-minute rows on Gemma 3 270M Q4_K_M (the default model), tuning splits only, on the lent
# H200; started by detach.sh (it runs past one call), once stash.sh has installed the CUDA llama_cpp and
# stashed the model's chunks:
#   bash scripts/device/detach.sh gem6 [SEEDS="0"] [JOBS=12] [BMIN=6] scripts/device/gemma6.sh SECONDS TUNE_DIR
# One seed's 8 rows need ~20 minutes of the machine (bench/accuracy-gemma-6min.md: 12 rows at once under MPS
# step 1.7-4.3x slower than alone, ~2.6 rows' worth of steps a second together), plus ~40 s a probe.
# P-RGE (zo-b64: llama.cpp with every layer on the GPU, batch 64, q 1, Gemma's lr and eps from its
# architecture) against first-order Adam on the same LoRA-FA attn_q + attn_v adapter (fo-qv: torch on CUDA)
# on SST-2, CB, WiC and RTE (TUNE_DIR: bench_accuracy's tuning_split files), with zero-shot and the majority
# class. bench_accuracy --probe-alone times each task and method's probe with nothing else running, turns
# BMIN minutes into each row's steps at that exclusive speed, then runs the rows JOBS at once under CUDA's
# multi-process service (mps.sh), one thread each. Everything stops after SECONDS; then $OUT holds
# gem6.{md,json,png,log}, rows.jsonl (finished rows), probes.jsonl and every run's metrics.jsonl under
# runs/ (stopped runs too).
LIMIT=$1; T=$2
. scripts/device/model.sh gemma3-270m
. scripts/device/mps.sh
W=/root/w-gem6
ARGS=(--tuning-only --tasks sst2 cb wic rte --models gemma3-270m=/root/gemma3-270m.gguf --methods zo-b64 fo-qv
      --seeds ${SEEDS:-0} --budget-min ${BMIN:-6} --evals ${EVALS:-6} --threads 1 --jobs ${JOBS:-12}
      --probe-alone --llama-args "--n-gpu-layers -1" --torch-args "--device cuda" --splits $T --work $W
      --out $OUT/gem6)
timeout $LIMIT python3 scripts/bench/bench_accuracy.py "${ARGS[@]}" > $OUT/gem6.log 2>&1; echo "bench rc $?"
# Stopped by the timeout: the report of the rows that finished.
[ -f $OUT/gem6.md ] || python3 scripts/bench/bench_accuracy.py "${ARGS[@]}" --report-only >> $OUT/gem6.log 2>&1
cp $W/rows.jsonl $W/probes.jsonl $OUT/
for run in $W/run-*; do mkdir -p $OUT/runs/${run##*/}; cp $run/metrics.jsonl $OUT/runs/${run##*/}/; done
tail -n 30 $OUT/gem6.log
