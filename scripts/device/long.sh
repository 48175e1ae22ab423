#!/bin/bash
# Training runs longer than one device call (10 min): each call trains every run for SECONDS, starting
# it in /root/long/NAME or resuming it there from its last checkpoint (`train --resume`), so calls on
# the same warm machine add up. Runs are spread over the GPUs, one process each.
#   CHUNKS=DIR scripts/device/long.sh MODEL SECONDS "NAME=TRAIN_FLAGS;NAME=TRAIN_FLAGS"
# e.g. long.sh smollm2-135m 540 "rte-2e-2=--task rte --data carry-acc/p2/tune/rte-tune-train.jsonl
#   --valid carry-acc/p2/tune/rte-tune-valid.jsonl --n-gpu-layers -1 --lr-schedule constant --steps 4000
#   --checkpoint-every 100 --eval-every 200 --eval-size 500"
# Returns NAME.tgz a run (config, metrics, best.gguf and the checkpoint; not adapter.gguf, peft/ or
# tensorboard/: the device returns 8 files of 16 MiB at most, so 8 runs a call, and 8 Gemma runs whole
# were more) and prints each run's evaluations. FROM=DIR (a carried folder of such run folders, the tgz
# files unpacked) continues runs a former machine started. Resumed runs are told --n-gpu-layers -1 (run
# folders from before config.json kept it do not say). GPU0=K puts the first run on GPU K, so that two
# long.sh of two models started side by side share the GPUs evenly.
MODEL=$1; LIMIT=$2; RUNS=$3
. scripts/device/model.sh "$MODEL"
NGPU=$(nvidia-smi -L | wc -l); i=${GPU0:-0}; NAMES=()
mkdir -p /root/long; [ -n "$FROM" ] && cp -rn "$FROM"/. /root/long/
IFS=';' read -ra runs <<< "$RUNS"
for run in "${runs[@]}"; do
  name=${run%%=*}; flags=${run#*=}; dir=/root/long/$name; NAMES+=("$name")
  [ -f $dir/checkpoint.json ] || rm -rf $dir  # stopped before its first checkpoint: start again
  if [ -d $dir ]; then args=(--resume $dir --n-gpu-layers -1); else args=(--model /root/$MODEL.gguf --out $dir $flags); fi
  CUDA_VISIBLE_DEVICES=$((i % NGPU)) timeout $LIMIT python3 -m prge_gguf train "${args[@]}" \
    > /root/long-$name.log 2>&1 &
  i=$((i + 1))
done
wait
for name in "${NAMES[@]}"; do
  echo "== $name: $(grep -c '"step_s"' /root/long/$name/metrics.jsonl) steps"; tail -c 300 /root/long-$name.log; echo
  python3 -c "import json,sys; [print(r['step'], round(r['eval_accuracy'], 3), round(r['eval_loss'], 3))
for r in map(json.loads, open(sys.argv[1])) if 'eval_accuracy' in r]" /root/long/$name/metrics.jsonl
done
cd /root/long && for n in "${NAMES[@]}"; do
  tar czf $OUT/$n.tgz $n/config.json $n/metrics.jsonl $n/checkpoint.json \
    $(ls $n/best.gguf $n/checkpoint-*.gguf $n/optimizer-*.npz 2>/dev/null)
done
