"""Hyper-parameter sweep: runs `prge-gguf train` jobs in parallel, one setting each.

Jobs are scored on held-out data given with --valid (for sst2: rows of SST-2
*train* outside the shipped 1,000; never the dev set that the README reports).
Writes a JSON file and a Markdown table.

    python scripts/sweep.py --task sst2 --valid VALID.tsv --steps 200 \
        --grid "lr=2e-3,5e-3;targets=attn_q,attn_v|all" --parallel 4 --threads 2 --out bench/sweep
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def parse_grid(spec: str) -> list[dict[str, str]]:
    """`"lr=1e-3,5e-3;q=1,4"` -> the cartesian product as flag dicts; `|` separates values
    that contain commas (`targets=attn_q,attn_v|all`)."""
    axes = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, _, values = part.partition("=")
        sep = "|" if "|" in values else ","
        axes.append([(key.strip(), v.strip()) for v in values.split(sep)])
    return [dict(combo) for combo in itertools.product(*axes)]


def run_job(i: int, flags: dict[str, str], args: argparse.Namespace) -> dict:
    out = Path(args.out) / f"job{i:02d}"
    cmd = [sys.executable, "-m", "prge_gguf", "train", "--task", args.task, "--valid", args.valid,
           "--steps", str(args.steps), "--eval-every", str(args.eval_every),
           "--eval-size", str(args.eval_size), "--threads", str(args.threads), "--out", str(out)]
    if args.model:
        cmd += ["--model", args.model]
    for key, value in flags.items():
        if not (key == "targets" and value == "all"):
            cmd += [f"--{key.replace('_', '-')}", value]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    metrics = out / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    evals = [(r["step"], r["eval_accuracy"]) for r in rows if "eval_accuracy" in r]
    final = next((r for r in rows if "final_eval_accuracy" in r), {})
    return {"flags": flags, "returncode": proc.returncode, "wall_s": time.perf_counter() - t0,
            "evals": evals, "final_accuracy": final.get("final_eval_accuracy"),
            "final_loss": final.get("final_eval_loss"),
            "error": proc.stderr[-500:] if proc.returncode else ""}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sst2")
    p.add_argument("--valid", required=True, help="held-out tuning data (not the reported test set)")
    p.add_argument("--model")
    p.add_argument("--grid", required=True, action="append", help="repeatable; each adds its product")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-size", type=int, default=200)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="bench/sweep")
    args = p.parse_args()
    grid = [flags for spec in args.grid for flags in parse_grid(spec)]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda ij: run_job(*ij, args), enumerate(grid)))
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "parallel": args.parallel, "threads": args.threads, "steps": args.steps,
            "valid": args.valid, "task": args.task}
    (Path(args.out) / "sweep.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = ["| setting | final held-out acc | evals (step: acc) | wall s |", "| --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: -(r["final_accuracy"] or 0)):
        setting = " ".join(f"{k}={v}" for k, v in r["flags"].items())
        curve = ", ".join(f"{s}: {a:.3f}" for s, a in r["evals"])
        acc = f"{r['final_accuracy']:.4f}" if r["final_accuracy"] is not None else "unfinished"
        lines.append(f"| {setting} | {acc} | {curve} | {r['wall_s']:.0f} |")
    table = "\n".join(lines)
    (Path(args.out) / "sweep.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
