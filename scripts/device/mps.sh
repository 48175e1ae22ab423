#!/bin/bash
# Sourced by the device scripts whose rows share one GPU: `. scripts/device/mps.sh` starts CUDA's
# multi-process service where the image has it and exports its pipe folder for every process started
# after it. Processes sharing a GPU are otherwise time-sliced, not overlapped (bench/estimators-tuning.md:
# 15 rows together stepped about as fast as one alone); under the service the rows' small kernels run
# side by side. Writes $OUT/mps.txt: whether it is on.
if command -v nvidia-cuda-mps-control > /dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  nvidia-cuda-mps-control -d && echo "mps: on" > $OUT/mps.txt
else
  echo "mps: not on this image" > $OUT/mps.txt
fi
