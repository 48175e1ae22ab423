#!/bin/bash
# The device returns at most 8 files of at most 16 MiB a call: packs the plain files in $OUT into as few
# uncompressed tars of at most 15 MiB as first-fit (largest first) gives (pack-1.tar, pack-2.tar, ...),
# e.g. after two long.sh runs side by side made more than 8 NAME.tgz. Unpack with `tar xf`.
cd "$OUT" || exit 1
find . -maxdepth 1 -type f ! -name 'pack-*' -printf '%f\n' | python3 -c '
import os, subprocess, sys
bins = []
for size, name in sorted(((os.path.getsize(n), n) for n in sys.stdin.read().split()), reverse=True):
    for b in bins:
        if b[0] + size <= 15 << 20:
            b[0] += size; b[1].append(name); break
    else:
        bins.append([size, [name]])
for k, (_, names) in enumerate(bins, 1):
    subprocess.run(["tar", "cf", f"pack-{k}.tar", *names], check=True)
    for n in names: os.remove(n)
'
ls -l
