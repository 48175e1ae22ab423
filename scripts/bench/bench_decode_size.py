"""Tokens per decode (`--n-ctx`) against the time of a P-RGE training step.

A decode attends over all its tokens, its sequences masked from one another, so a bigger decode
spends more on attention and a smaller one more on launches and passes over the weights; where
the balance lies depends on the machine. Each setting is a `prge-gguf train` run in a process of
its own, the settings alternating over --rounds. A row is the median over its rounds of each run's
median step after the warm-up, split as train logs it: llama.cpp's decode, logits -> log-probs,
adapter swaps, and the rest (Python). n_ctx 0 is train's own fit.

    python scripts/bench/bench_decode_size.py --task rte --data ../shared/data/superglue/RTE/train.jsonl \\
        --batch-size 16 --n-ctx 0 320 640 1024      # -> bench/decode_size.{json,md}
    # on a GPU: --train-args "--n-gpu-layers -1" --batch-size 64 --n-ctx 0 1024 1536 2048 4096
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import machine, made_by, write_outputs
from report_runs import SPLIT, step_time

WARM_UP = 2  # step rows left out of each run's median


def _tiny_valid(data: Path, folder: Path) -> Path:
    """A held-out file of the data's first record (train's final scoring is not what is timed)."""
    lines = data.read_text().splitlines()
    path = folder / f"valid{data.suffix}"
    path.write_text("\n".join(lines[: 2 if data.suffix == ".tsv" else 1]) + "\n")
    return path


def run_once(n_ctx: int, args: argparse.Namespace, valid: Path, folder: Path) -> dict:
    """One `prge-gguf train` run at `n_ctx` tokens a decode, scored on `valid`: its step_time medians."""
    out = folder / f"run-{n_ctx}"
    cmd = [sys.executable, "-m", "prge_gguf", "train", "--task", args.task, "--data", str(args.data),
           "--valid", str(valid), "--batch-size", str(args.batch_size),
           "--steps", str(args.steps + WARM_UP), "--eval-every", "0", "--checkpoint-every", "0",
           "--out", str(out), *(["--n-ctx", str(n_ctx)] if n_ctx else []), *shlex.split(args.train_args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{shlex.join(cmd)}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    shutil.rmtree(out)
    timing = step_time(rows, WARM_UP)
    if timing is None:
        sys.exit(f"{shlex.join(cmd)}: no timed steps (raise --steps)")
    return timing


def table(rows: list[dict], notes: str) -> str:
    """Markdown: one row a decode size, each part's median and the step's rate against the fastest."""
    fastest = min(r["step_s"] for r in rows)
    head = "| tokens a decode | s a step | decode | logits | adapter | rest | steps a minute | vs fastest |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        rest = r["step_s"] - sum(r[k] for k in SPLIT)
        parts = " | ".join(f"{r[k]:.3f}" for k in SPLIT)
        lines.append(f"| {r['n_ctx'] or 'fitted'} | {r['step_s']:.3f} | {parts} | {rest:.3f} | "
                     f"{60 / r['step_s']:.1f} | {r['step_s'] / fastest:.2f}x |")
    return "\n".join(lines) + "\n\n" + notes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="built-in task (sst2, rte, cb, copa, wic)")
    p.add_argument("--data", type=Path, required=True, help="its training file (JSONL or TSV)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-ctx", type=int, nargs="+", default=[0, 320, 640, 1024],
                   help="tokens a decode to compare (0: train's fit)")
    p.add_argument("--steps", type=int, default=6, help="timed steps a run (after the warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="rounds over the settings (alternating)")
    p.add_argument("--train-args", default="", help="more `prge-gguf train` flags, e.g. '--n-gpu-layers -1'")
    p.add_argument("--out", default="bench/decode_size")
    args = p.parse_args()
    if not args.data.is_file():
        p.error(f"--data {args.data}: no such file")
    runs: dict[int, list[dict]] = {n: [] for n in args.n_ctx}
    with tempfile.TemporaryDirectory(prefix="prge-bench-") as tmp:
        valid = _tiny_valid(args.data, Path(tmp))
        for _ in range(args.rounds):
            for n in args.n_ctx:
                runs[n].append(run_once(n, args, valid, Path(tmp)))
                print(f"n_ctx {n or 'fitted'}: {runs[n][-1]['step_s']:.3f} s a step", file=sys.stderr)
    rows = [{"n_ctx": n, **{k: statistics.median(r[k] for r in reps) for k in reps[0]}}
            for n, reps in runs.items()]
    host = machine()
    notes = (f"{args.task}, batch {args.batch_size}, {args.rounds} alternating rounds x {args.steps} timed "
             f"steps, medians; train flags: '{args.train_args}'. GPU: {host.get('gpu') or 'none'}. "
             + made_by(host))
    write_outputs(args.out, {"machine": host, "task": args.task, "batch_size": args.batch_size,
                             "steps": args.steps, "rounds": args.rounds, "train_args": args.train_args,
                             "rows": rows}, table(rows, notes))


if __name__ == "__main__":
    main()
