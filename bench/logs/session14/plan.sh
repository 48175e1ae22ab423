#!/bin/bash
# What ran on the device in session 14 (a record; run from the repository root on a 4-GPU machine after
# stash.sh of both models): `bash plan.sh SECONDS` (copa rows), `SCHED=1` adds the schedule rows,
# `MORE=1` runs the Gemma vocab seeds 1-4 alone. bench/NOTES.md, session 14, has the story.
T=carry-acc/p2/tune; G=carry-gem/tune; L=$1
S="--task copa --data $T/copa-tune-train.jsonl --valid $T/copa-tune-valid.jsonl --n-gpu-layers -1 --lr-schedule constant --steps 1600 --checkpoint-every 100 --eval-every 200 --eval-size 0"
GM="--task copa --data $G/copa-tune-train.jsonl --valid $G/copa-tune-valid.jsonl --n-gpu-layers -1 --lr-schedule constant --steps 1000 --checkpoint-every 100 --eval-every 200 --eval-size 0"
SR=""; for s in 0 1 2 3 4; do SR+="copa-s$s=$S --lr 2e-3 --seed $s;"; done
SR+="copav5e-4-s0=$S --loss vocab --lr 5e-4 --seed 0;copav2e-3-s0=$S --loss vocab --lr 2e-3 --seed 0"
GR=""; for s in 2 3 4; do GR+="gem-copa3e4-s$s=$GM --lr 3e-4 --seed $s;"; done
GR+="gem-copav1e-4-s0=$GM --loss vocab --lr 1e-4 --seed 0;gem-copav3e-4-s0=$GM --loss vocab --lr 3e-4 --seed 0"
K=carry-acc/tune14
B="--n-gpu-layers -1 --checkpoint-every 100 --eval-every 200 --eval-size 0"
SS="--task sst2 --valid $K/sst2-tune.tsv --steps 1200 $B"; SC="--task cb --data $K/cb-tune-train.jsonl --valid $K/cb-tune-valid.jsonl --steps 800 $B"
CR=""; for s in 0 1; do CR+="sst2-lin-s$s=$SS --seed $s;sst2-con-s$s=$SS --lr 1e-2 --lr-schedule constant --seed $s;"
  CR+="cb-lin-s$s=$SC --seed $s;cb-con-s$s=$SC --lr 1e-2 --lr-schedule constant --seed $s;"; done; CR=${CR%;}
[ -n "$MORE" ] && { SR=""; GR=""; for s in 1 2 3 4; do GR+="gem-copav1e-4-s$s=$GM --loss vocab --lr 1e-4 --seed $s;gem-copav3e-4-s$s=$GM --loss vocab --lr 3e-4 --seed $s;"; done; GR=${GR%;}; }
[ -n "$DRY" ] && { echo "$SR" | tr ';' '\n'; echo "$GR" | tr ';' '\n'; echo "$CR" | tr ';' '\n'; exit; }
CHUNKS=carry-acc/p2 . scripts/device/model.sh smollm2-135m  # joined one at a time: model.sh then wrote one /root/joined.gguf for any model
. scripts/device/model.sh gemma3-270m
[ -n "$SR" ] && bash scripts/device/long.sh smollm2-135m $L "$SR" > $OUT/smollm.log 2>&1 &
GPU0=3 bash scripts/device/long.sh gemma3-270m $L "$GR" > $OUT/gemma.log 2>&1 &
[ -n "$SCHED" ] && GPU0=3 bash scripts/device/long.sh smollm2-135m $L "$CR" > $OUT/sched.log 2>&1 &
wait
grep -hE '^== |^[0-9]+ [0-9.]+ [0-9.]+$' $OUT/*.log | awk '/^==/{printf "\n%s |", $0; next} {printf " %s:%s", $1, $2}'; echo
bash scripts/device/pack.sh
