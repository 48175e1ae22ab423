"""Step time of `prge-gguf train --distributed` on 1 and 2 ranks of this machine, what travels per
step, and the step time projected for N machines from the measured compute/communication split.

Each configuration is one `torchrun --standalone` job on SST-2 (batch 16), timed from its
metrics.jsonl (median step time after the first steps). Run nothing else meanwhile.

    python scripts/bench/bench_distributed.py            # -> bench/distributed.{json,md}
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import machine, write_outputs

# (ranks, threads per rank, q): 1 x 2 threads against 2 x 1 thread uses both cores either way.
CONFIGS = [(1, 2, 1), (2, 1, 1), (1, 1, 1), (1, 2, 2), (2, 1, 2)]
LAN_LATENCY_S = 0.5e-3  # assumed one-way small-message latency between machines on a LAN


def run_job(ranks: int, threads: int, q: int, steps: int, work: Path) -> dict:
    """One torchrun job; its median step time and communication per step."""
    out = work / f"r{ranks}-t{threads}-q{q}"
    valid = work / "valid.jsonl"
    valid.write_text('{"text": "a joy", "label": 1}\n')
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", str(ranks), "-m", "prge_gguf", "train", "--task", "sst2",
                    "--valid", str(valid), "--steps", str(steps), "--q", str(q), "--eval-every", "0",
                    "--checkpoint-every", "0", "--threads", str(threads), "--distributed",
                    "--out", str(out)], check=True, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "loss" in r][2:]  # the first steps warm caches and page in weights
    return {"ranks": ranks, "threads": threads, "q": q, "steps_timed": len(timed),
            "step_s": statistics.median(r["step_s"] for r in timed),
            "comm_s": statistics.median(r.get("comm_s", 0.0) for r in timed),
            "comm_s_min": min((r.get("comm_s", 0.0) for r in timed), default=0.0),
            "comm_bytes_per_rank": timed[0].get("comm_bytes", 0),
            "adapter_sha256": timed[-1]["adapter_sha256"]}


def projection(one_thread_step_s: float, q: int, latency_s: float) -> list[dict]:
    """Step time on N machines: each evaluates ceil(2q/N) of the 2q perturbations (at the measured
    one-core time per evaluation, one core per machine assumed), plus an all-reduce and a hash
    all-gather, each a ring of 2(N-1) small-message hops."""
    per_eval = one_thread_step_s / (2 * q)
    rows = []
    for n in (1, 2, 4, 8, 16):
        if n > 2 * q:
            break
        comm = 2 * 2 * (n - 1) * latency_s
        step = per_eval * math.ceil(2 * q / n) + comm
        rows.append({"machines": n, "q": q, "step_s": step, "comm_s": comm,
                     "speedup": one_thread_step_s / step})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="bench/distributed")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_job(r, t, q, args.steps, Path(tmp)) for r, t, q in CONFIGS]
    by = {(r["ranks"], r["threads"], r["q"]): r for r in runs}
    for q in (1, 2):  # the same seed and settings end with the same adapter on any layout
        assert by[(1, 2, q)]["adapter_sha256"] == by[(2, 1, q)]["adapter_sha256"]
    one_core = by[(1, 1, 1)]["step_s"]
    result = {
        "machine": machine(), "model": "SmolLM2-135M-Instruct Q4_1 (shipped)", "task": "sst2",
        "batch_size": 16, "runs": runs,
        "projection": {"assumed_lan_latency_s": LAN_LATENCY_S,
                       "rows": projection(one_core * 8, 8, LAN_LATENCY_S)},
    }
    lines = ["| ranks x threads | q | step (s) | in collectives (s, median / min) "
             "| bytes sent per rank and step |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['ranks']} x {r['threads']} | {r['q']} | {r['step_s']:.3f} | "
              f"{r['comm_s']:.4f} / {r['comm_s_min']:.5f} | {r['comm_bytes_per_rank']} |" for r in runs]
    lines += ["", f"Projection for q = 8 (16 perturbations a step) on N one-core machines, from the measured "
              f"one-core time per perturbation ({one_core / 2:.2f} s) and {LAN_LATENCY_S * 1e3:.1f} ms "
              "per small-message hop (assumed LAN):", "",
              "| machines | step (s) | of which communication (s) | speedup |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['machines']} | {r['step_s']:.3f} | {r['comm_s']:.4f} | {r['speedup']:.2f}x |"
              for r in result["projection"]["rows"]]
    lines += ["", f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; "
              f"commit {result['machine']['git_commit']}. Same seed: 1 x 2 and 2 x 1 end with the same "
              "adapter hash (checked)."]
    write_outputs(args.out, result, "\n".join(lines))


if __name__ == "__main__":
    main()
