#!/bin/bash
# On the lent GPU machine (the device tool), for files too big for one call's 64 MiB carry.
# Copies the model chunks (NAME.gguf.K; chunk.sh makes such folders) of the carried folders given as
# arguments to /root/stash, where later calls on the same warm machine find them; on the first call also
# installs the CUDA llama_cpp build and the pure-Python wheels of carry-gpu/whl (made here by
# `python scripts/bench/bench_gpu.py --prepare-carry carry-gpu`) into /root/site.
#   scripts/device/stash.sh carry-gem/c1          (carry: ["carry-gpu/whl", "carry-gem/c1"])
set -e
mkdir -p /root/stash /root/site
for dir in "$@"; do cp "$dir"/*.gguf.* /root/stash/; done
if [ ! -d /root/site/llama_cpp ] && [ -d carry-gpu/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site carry-gpu/whl/*.whl
  cat carry-gpu/whl/llama_cpp-*-cuda-sm90.tar.xz.part* | tar -C /root/site -xJf -
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
ls -l /root/stash
