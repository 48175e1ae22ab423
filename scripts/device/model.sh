#!/bin/bash
# Sourced by the device scripts: `. model.sh MODEL` joins MODEL's chunks (stashed by stash.sh,
# or in the folders named in $CHUNKS, carried by this call) into /root/MODEL.gguf once they
# check against models.sha256 (each model in its own temporary file, so that two scripts joining two
# models at once do not write one file), and sets the environment the carried CUDA llama_cpp needs.
_model=$1
export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libstdc++.so.6 PYTHONPATH=/root/site:$PWD PYTHONUNBUFFERED=1
if [ ! -f /root/$_model.gguf ]; then  # chunks in the order of their last suffix, wherever they lie
  chunks=(/root/stash/$_model.gguf.*); for dir in $CHUNKS; do chunks+=("$dir"/$_model.gguf.*); done
  cat $(printf '%s\n' "${chunks[@]}" | awk -F. '{print $NF, $0}' | sort -n | cut -d' ' -f2) > /root/$_model.joining
  (cd /root && grep " $_model.gguf\$" "$OLDPWD/scripts/device/models.sha256" | sed "s/ [^ ]*\$/ $_model.joining/" \
    | sha256sum -c --quiet) || { echo "$_model: chunks missing or corrupt"; exit 3; }
  mv /root/$_model.joining /root/$_model.gguf
fi
