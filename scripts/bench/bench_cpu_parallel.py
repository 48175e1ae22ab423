"""`--parallel` on the CPU: `prge-gguf train --task sst2` steps with K llama.cpp contexts sharing
the threads, for K = 1, 2, ... (the behind of `settings.default_parallel`'s CPU rule).

One run, one machine, nothing else running: each (model, K) trains in its own process, the
processes alternate over `--rounds`, and each reports the median step time of its steps after
`--warmup`. Every K trains the same batches and must end with the same adapter (compared by
the logged hash), so the rows differ in speed alone. `--routed-site DIR` (a folder holding
llama-cpp-python built with adapter routing, e.g. `pip install --target DIR` of the wheel
scripts/build_llama_routing.py makes) adds rows rK: K contexts on that build, each scoring its
share of a step's perturbations in shared decodes.

    python scripts/bench/bench_cpu_parallel.py      # -> bench/cpu_parallel.{json,md}; ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import machine, made_by, write_outputs

ROUTED_NOTE = ("rK: K contexts on llama.cpp with adapter routing (patches/llama-cpp-adapter-routing.patch), "
               "a context's perturbations in shared decodes; packed with other sequences, their log-probs "
               "move (llama.cpp's numerics depend on a decode's make-up), so the routed rows' adapters "
               "match each other, not the others'. ")


def train_steps(model: str, parallel: int, steps: int, threads: int, site: str | None = None) -> list[dict]:
    """The step rows of one `prge-gguf train --task sst2` run (no evaluation, no checkpoints),
    with the llama_cpp package of `site` if given."""
    env, routing = dict(os.environ), []
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(site).resolve()), env.get("PYTHONPATH", "")])
        routing = ["--routing"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        subprocess.run([sys.executable, "-m", "prge_gguf", "train", "--task", "sst2", "--model", model,
                        "--steps", str(steps), "--parallel", str(parallel), "--threads", str(threads),
                        "--eval-every", "0", "--checkpoint-every", "0", "--out", str(out), *routing],
                       check=True, capture_output=True, env=env)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "step_s" in r]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["gemma3-270m", "smollm2-135m"])
    p.add_argument("--parallel", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=16, help="steps a process")
    p.add_argument("--warmup", type=int, default=4, help="first steps of a process left out of its median")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--routed-site", help="llama-cpp-python with adapter routing: adds rows rK")
    p.add_argument("--routed", nargs="+", type=int, default=[1], help="K of the routed rows")
    p.add_argument("--out", default="bench/cpu_parallel")
    args = p.parse_args()
    variants = [(k, False) for k in args.parallel] + [(k, True) for k in args.routed if args.routed_site]
    medians: dict[tuple[str, int, bool], list[float]] = {}
    hashes: dict[str, set[str]] = {}
    for _ in range(args.rounds):
        for model in args.models:
            for k, routed in variants:
                rows = train_steps(model, k, args.steps, args.threads, args.routed_site if routed else None)
                timed = [r["step_s"] for r in rows[args.warmup:]]
                medians.setdefault((model, k, routed), []).append(statistics.median(timed))
                # routed decodes pack other sequences together, which moves llama.cpp's numerics
                key = f"{model} routed" if routed else model
                hashes.setdefault(key, set()).add(rows[-1]["adapter_sha256"])
    if unequal := [m for m, h in hashes.items() if len(h) > 1]:
        sys.exit(f"the K rows of {', '.join(unequal)} ended with different adapters")
    lines = ["| model | --parallel | contexts x threads | s/step (median of rounds) | each round | speedup |",
             "| --- | --- | --- | --- | --- | --- |"]
    rows = []
    for (model, k, routed), runs in medians.items():
        s = statistics.median(runs)
        base = statistics.median(medians[(model, args.parallel[0], False)])
        rows.append({"model": model, "parallel": k, "routing": routed, "s_per_step": s, "rounds": runs,
                     "speedup": base / s})
        split = f"{k} x {max(1, args.threads // k)}"
        lines.append(f"| {model} | {'r' if routed else ''}{k} | {split} | {s:.3f} | "
                     f"{', '.join(f'{r:.3f}' for r in runs)} | {base / s:.2f}x |")
    m = machine()
    note = (f"\n\nSST-2 training steps (batch 16, q 1, each model's defaults), {args.threads} threads, "
            f"{args.rounds} alternating rounds of {args.steps} steps a process, the first {args.warmup} "
            f"left out; every K ended with the same adapter. {ROUTED_NOTE if args.routed_site else ''}"
            f"{made_by(m)}")
    write_outputs(args.out, {"machine": m, "args": vars(args), "rows": rows}, "\n".join(lines) + note)


if __name__ == "__main__":
    main()
