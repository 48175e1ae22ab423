#!/bin/bash
# Accuracy rows on the lent GPU machine: scripts/bench/bench_accuracy.py with CUDA llama.cpp and torch.
#   CHUNKS=DIR scripts/device/accuracy.sh MODEL SECONDS JOBS "TASKS" "SEEDS"
# MODEL is smollm2-135m or gemma3-270m (joined by model.sh from $CHUNKS). The bench stops after SECONDS;
# its rows stay in /root/work-NAME, so a later call on the same machine goes on from them
# (SEED_ROWS=FILE starts a fresh machine from rows fetched earlier). Env: BMIN (training
# minutes per row, default 1), METHODS, DEFINES (further methods: NAME=FLAGS;NAME=FLAGS), NAME
# (output name, default accuracy-MODEL), GPUS (spread the rows over this many GPUs).
# SuperGLUE data comes from carry-acc/p2/superglue (a copy of ../shared/data/superglue), the
# training/validation splits from carry-acc/p2/tune (sweep.py and bench_accuracy write them).
MODEL=$1; LIMIT=$2; JOBS=$3; TASKS=$4; SEEDS=$5
. scripts/device/model.sh "$MODEL"
W=/root/work-${NAME:-accuracy-$MODEL}; mkdir -p $W
[ -n "$SEED_ROWS" ] && [ ! -s $W/rows.jsonl ] && cp "$SEED_ROWS" $W/rows.jsonl
DEF=(); IFS=';' read -ra _defs <<< "$DEFINES"; for d in "${_defs[@]}"; do DEF+=(--define "$d"); done
ARGS=("${DEF[@]}" --models $MODEL=/root/$MODEL.gguf --tasks $TASKS --seeds $SEEDS --budget-min ${BMIN:-1}
      ${METHODS:+--methods $METHODS} ${GPUS:+--gpus $GPUS} --threads 2 --jobs $JOBS --llama-args "--n-gpu-layers -1"
      --torch-args "--device cuda" --data-dir carry-acc/p2 --splits carry-acc/p2/tune --work $W --out $OUT/${NAME:-accuracy-$MODEL})
N=${NAME:-accuracy-$MODEL}
timeout $LIMIT python3 scripts/bench/bench_accuracy.py "${ARGS[@]}" > $OUT/$N.log 2>&1; echo "bench rc $?"
python3 scripts/bench/bench_accuracy.py "${ARGS[@]}" --report-only >> $OUT/$N.log 2>&1; echo "report rc $?"
cp $W/rows.jsonl $OUT/$N-rows.jsonl; tail -c 5000 $OUT/$N.log
