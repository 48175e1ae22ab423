#!/bin/bash
# Runs a device script past the end of the call that starts it (one call runs 10 minutes at most;
# a process in a session of its own runs on until the machine goes back), from a copy of the
# repository, so that the next call's fresh working tree cannot change the code under it.
#   bash scripts/device/detach.sh NAME [ENV=VALUE ...] scripts/device/SCRIPT.sh ARGS...
# The script's $OUT is /root/detached/NAME and its output /root/detached/NAME/run.log; later calls
# on the same warm machine read them with `bash scripts/device/detach.sh --collect` (NAME.tgz of each
# detached run's folder in $OUT, and each one's log tail; the device returns files of 16 MiB at most,
# so split many runs over several NAMEs, ~4 Gemma runs a NAME) or wait with `--wait SECONDS`. The
# data folders carry-acc/p2 and carry-gem/tune, where carried, are copied with the code; start the
# script once stash.sh has run.
case $1 in
  --collect)
    for d in /root/detached/*/; do
      echo "== $d"; tail -c 1500 $d/run.log; tar -C /root/detached -czf $OUT/$(basename $d).tgz $(basename $d)
    done; exit ;;
  --wait)  # until every detached run has ended, or SECONDS have passed
    end=$((SECONDS + $2))
    while [ $SECONDS -lt $end ] && pgrep -f detached-run > /dev/null; do sleep 10; done
    for d in /root/detached/*/; do echo "== $d"; tail -c 600 $d/run.log; done; exit ;;
esac
NAME=$1; shift; ENVS=()
while [[ $1 == *=* ]]; do ENVS+=("$1"); shift; done
REPO=/root/detached-repo
if [ ! -d $REPO ]; then
  mkdir -p $REPO && cp -r .git prge_gguf converters scripts pyproject.toml $REPO/
  for data in carry-acc/p2 carry-gem/tune; do [ -d $data ] && cp -r --parents $data $REPO/; done
fi
mkdir -p /root/detached/$NAME
cd $REPO && setsid env OUT=/root/detached/$NAME "${ENVS[@]}" bash -c 'exec -a detached-run bash "$@"' _ "$@" \
  > /root/detached/$NAME/run.log 2>&1 < /dev/null &
echo "started $NAME (pid $!)"
