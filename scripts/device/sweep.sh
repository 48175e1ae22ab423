#!/bin/bash
# A tuning sweep (scripts/bench/sweep.py, training data only) on the lent GPU machine.
#   CHUNKS=DIR scripts/device/sweep.sh MODEL SECONDS PARALLEL "TASKS" "ENGINE_FLAGS" GRID...
# e.g. sweep.sh smollm2-135m 540 16 "sst2 cb" "--n-gpu-layers -1" "eps=1e-2,5e-2;seed=0,1"
# Tuning splits come from carry-acc/p2/tune (sweep.py wrote them there: --splits). Env:
# STEPS (400), EVERY (100), GPUS (spread the jobs over this many GPUs), NAME (output names,
# default sweep: two sweeps of one call need two; join the model first, `. model.sh MODEL`).
MODEL=$1; LIMIT=$2; PAR=$3; TASKS=$4; FLAGS=$5; NAME=${NAME:-sweep}; shift 5
. scripts/device/model.sh "$MODEL"
GRIDS=(); for g in "$@"; do GRIDS+=(--grid "$g"); done
OUTDIR=/root/sweep-$$
(cd scripts && python3 sweep.py --tasks $TASKS --model /root/$MODEL.gguf \
  --splits ../carry-acc/p2/tune --steps ${STEPS:-400} --eval-every ${EVERY:-100} --eval-size 500 \
  --parallel $PAR ${GPUS:+--gpus $GPUS} --threads 1 --extra "$FLAGS" --time-limit $((LIMIT - 20)) --out $OUTDIR "${GRIDS[@]}") \
  > $OUT/$NAME.log 2>&1
echo "sweep rc $?"; cp $OUTDIR/sweep.json $OUT/$NAME.json; cp $OUTDIR/sweep.md $OUT/$NAME.md
cat $OUT/$NAME.md
