"""Hyper-parameter sweep: runs `prge-gguf train` jobs in parallel, one (task, setting) each.

Jobs train and are scored on *training* data only (tuning splits, below); the dev/val sets that
the README reports are never read. Writes sweep.json and a Markdown table.

Tuning splits: bench_accuracy's training and validation files (`tuning_split`, its docstring):
jobs train on what its rows train on and are scored on the validation rows it selects with.

    python scripts/bench/sweep.py --tasks sst2 rte --steps 400 \
        --grid "optimizer=zo;lr=2e-3,5e-3;targets=attn_q,attn_v|all" --parallel 4 --out bench/sweep
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_accuracy import DATA_DIR, TASK_FILES, TUNE_ROWS, tuning_split
from bench_common import GpuSlots, machine

from prge_gguf.targets import TARGETS


def parse_grid(spec: str) -> list[dict[str, str]]:
    """`"lr=1e-3,5e-3;q=1,4"` -> the cartesian product as flag dicts; `|` separates values
    that contain commas (`targets=attn_q,attn_v|all`)."""
    axes = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        key, _, values = part.partition("=")
        sep = "|" if "|" in values else ","
        axes.append([(key.strip(), v.strip()) for v in values.split(sep)])
    return [dict(combo) for combo in itertools.product(*axes)]


def run_job(i: int, task: str, flags: dict[str, str], data: list[str], args: argparse.Namespace) -> dict:
    """One training run; its held-out evaluations, read back from metrics.jsonl (also when the
    job was stopped at --job-timeout or at the sweep's --time-limit)."""
    out = Path(args.out) / f"job{i:03d}"
    cmd = [sys.executable, "-m", "prge_gguf", "train", *data, "--steps", str(args.steps),
           "--eval-every", str(args.eval_every), "--eval-size", str(args.eval_size),
           "--threads", str(args.threads), "--out", str(out), *shlex.split(args.extra)]
    if args.model:
        cmd += ["--model", args.model]
    for key, value in flags.items():
        if key == "targets" and value == "all":
            value = ",".join(TARGETS)
        cmd += [f"--{key.replace('_', '-')}", value]
    t0 = time.perf_counter()
    # Its own process group, so a stop also ends what the job started (which would hold the pipe).
    with args.gpu_slots.env() as env:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, env=env)
        timeout = min(args.job_timeout or float("inf"), args.deadline - time.monotonic())
        try:
            _, stderr = proc.communicate(timeout=max(timeout, 0.0))
            returncode, error = proc.returncode, stderr[-500:] if proc.returncode else ""
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode, error = None, f"stopped after {time.perf_counter() - t0:.0f} s"
    metrics = out / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    evals = [(r["step"], r["eval_accuracy"], r["eval_loss"]) for r in rows if "eval_accuracy" in r]
    final = next((r for r in rows if "final_eval_accuracy" in r), {})
    steps = [r for r in rows if "step_s" in r]
    return {"task": task, "flags": flags, "returncode": returncode, "wall_s": time.perf_counter() - t0,
            "steps_done": len(steps), "evals": evals, "final_accuracy": final.get("final_eval_accuracy"),
            "final_loss": final.get("final_eval_loss"), "error": error}


def _table(results: list[dict]) -> str:
    lines = ["| task | setting | final held-out acc | evals (step: acc) | steps | wall s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: (r["task"], -(r["final_accuracy"] or 0))):
        setting = " ".join(f"{k}={v}" for k, v in r["flags"].items())
        curve = ", ".join(f"{s}: {a:.3f}" for s, a, _ in r["evals"])
        acc = f"{r['final_accuracy']:.3f}" if r["final_accuracy"] is not None else "unfinished"
        lines.append(f"| {r['task']} | {setting} | {acc} | {curve} | {r['steps_done']} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["sst2"], choices=["sst2", *TASK_FILES])
    p.add_argument("--data-dir", type=Path, default=DATA_DIR,
                   help="folder of sst2/train.tsv and superglue/<TASK>/train.jsonl (training data only)")
    p.add_argument("--model")
    p.add_argument("--grid", required=True, action="append", help="repeatable; each adds its product")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-size", type=int, default=200)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gpus", type=int, default=0, help="spread the jobs over this many GPUs")
    p.add_argument("--extra", default="", help="flags for every job, e.g. '--engine torch --device cuda'")
    p.add_argument("--job-timeout", type=float, help="stop a job after this many seconds (evals kept)")
    p.add_argument("--time-limit", type=float, default=float("inf"),
                   help="stop every job this many seconds after the sweep starts, and write the table")
    p.add_argument("--splits", type=Path, help="folder of the tuning-split files (default OUT/data); "
                   "files already there are used as they are")
    p.add_argument("--out", default="bench/sweep")
    args = p.parse_args()
    args.deadline = time.monotonic() + args.time_limit
    args.gpu_slots = GpuSlots(args.gpus)
    grid = [flags for spec in args.grid for flags in parse_grid(spec)]
    out = Path(args.out)
    data = {task: tuning_split(task, args.data_dir, args.splits or out / "data") for task in args.tasks}
    jobs = [(task, flags) for task in args.tasks for flags in grid]
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda k: run_job(k, *jobs[k], data[jobs[k][0]], args), range(len(jobs))))
    meta = {"machine": machine(), "parallel": args.parallel, "gpus": args.gpus, "threads": args.threads,
            "steps": args.steps, "extra": args.extra, "tasks": args.tasks, "tune_rows": TUNE_ROWS}
    (out / "sweep.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    table = _table(results)
    (out / "sweep.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
