"""Report on finished (or stopped) training runs: each run folder's settings, its held-out
evaluations and median step time (split into llama.cpp's decode, logits -> log-probs and adapter
swaps, the rest being Python) from metrics.jsonl, and with --test the test set's accuracy of the
base model, of best.gguf (the best held-out evaluation's adapter, MeZO's selection) and of the last
adapter (adapter.gguf, else the newest checkpoint), each scored by `prge-gguf eval`.

For runs too long for one sitting (scripts/device/long.sh brings their folders back):

    python scripts/bench/report_runs.py runs/lr1e-2 runs/lr2e-2 --task rte \
        --test ../shared/data/superglue/RTE/val.jsonl --out bench/sweeps/rte-long
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from bench_common import machine, made_by, write_outputs
from gguf import GGUFReader

# The settings a row shows (config.json's "train"), in this order.
SHOWN = ("optimizer", "lr", "lr_schedule", "batch_size", "q", "rank", "alpha", "eps", "steps", "seed")
SPLIT = ("decode_s", "logits_s", "adapter_s")
WARM_UP = 10  # first step rows left out of the median (context creation, caches)
SEED_SUFFIX = re.compile(r"-s\d+$")  # runs named STEM-s0, STEM-s1 ...: one setting's seeds


def last_adapter(run: Path) -> Path | None:
    """adapter.gguf, else the newest checkpoint (a stopped run's folder as long.sh returns it)."""
    if (run / "adapter.gguf").exists():
        return run / "adapter.gguf"
    return max(run.glob("checkpoint-*.gguf"), default=None)


def best_step(path: Path) -> int:
    """The step best.gguf was saved at (its prge.step metadata)."""
    return int(GGUFReader(path).fields["prge.step"].contents())


def score(task: str, test: Path, adapter: Path | None, extra: list[str]) -> dict:
    """`prge-gguf eval --json` of `adapter` (None: the base model) on `test`."""
    cmd = [sys.executable, "-m", "prge_gguf", "eval", "--task", task, "--valid", str(test), "--json", *extra]
    done = subprocess.run(cmd + (["--adapter", str(adapter)] if adapter else []), capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_time(rows: list[dict], warm_up: int = WARM_UP) -> dict | None:
    """Median seconds a step and of its parts over the step rows after the first `warm_up`, with
    the median tokens a step; None where the run logged too few steps or no split (torch engine)."""
    steps = [r for r in rows if "step_s" in r][warm_up:]
    if not steps or any(k not in steps[0] for k in SPLIT):
        return None
    return {k: statistics.median(r[k] for r in steps) for k in ("step_s", *SPLIT, "tokens")}


def report(run: Path, task: str, test: Path | None, extra: list[str]) -> dict:
    """One run's row: settings, steps done, evaluations, test scores."""
    config = json.loads((run / "config.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    row = {"run": run.name, "task": config["source"]["task"], "n_ctx": config["source"]["n_ctx"],
           "settings": {k: config["train"][k] for k in SHOWN},
           "steps_done": max((r["step"] for r in rows if "step_s" in r), default=0),
           "step_time": step_time(rows),
           "evals": [(r["step"], r["eval_accuracy"], r["eval_loss"]) for r in rows if "eval_loss" in r]}
    if test:
        row["best_step"] = best_step(run / "best.gguf")
        row["test_best"] = score(task, test, run / "best.gguf", extra)
        last = last_adapter(run)
        row["test_last"] = score(task, test, last, extra) if last else None
    return row


def seed_spread(rows: list[dict]) -> dict[str, dict]:
    """Test accuracy (%) over the seeds of each setting with two or more scored runs (named STEM-sN):
    for best.gguf and the last adapter, the mean, the standard deviation and each seed's."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("test_best") and (m := SEED_SUFFIX.search(r["run"])):
            groups.setdefault(r["run"][: m.start()], []).append(r)
    spread = {}
    for stem, runs in groups.items():
        scores = {k: [100 * r[f"test_{k}"]["accuracy"] for r in runs if r[f"test_{k}"]]
                  for k in ("best", "last")}
        if all(len(v) > 1 for v in scores.values()):
            spread[stem] = {k: {"mean": statistics.mean(v), "sd": statistics.stdev(v), "seeds": v}
                            for k, v in scores.items()}
    return spread


def _spread_line(stem: str, spread: dict) -> str:
    """`stem: best 68.8 +- 1.3 (69.6 / 67.9), last ...`"""
    parts = [f"{k} {s['mean']:.1f} +- {s['sd']:.1f} ({' / '.join(f'{v:.1f}' for v in s['seeds'])})"
             for k, s in spread.items()]
    return f"- {stem}: " + ", ".join(parts)


def table(rows: list[dict], zero: dict | None, spread: dict[str, dict], m: dict) -> str:
    """The Markdown table of `report`'s rows, the base model's test score and the seeds' `spread`
    under it (with --test)."""
    head = ("| run | task | settings | steps | s a step (decode / logits / adapter) | tokens a step "
            "| held-out accuracy (step: acc) |")
    lines = [head + (" test: best (step) | test: last |" if zero else ""),
             "|" + " --- |" * (head.count("|") - 1 + (2 if zero else 0))]
    for r in rows:
        s = r["settings"]
        settings = " ".join(f"{k}={s[k]}" for k in SHOWN if k != "steps") + f" of {s['steps']}"
        settings += f" n_ctx={r['n_ctx'] or 'fitted'}"
        evals = ", ".join(f"{step}: {acc:.3f}" for step, acc, _ in r["evals"])
        t = r["step_time"]
        split = f"{t['step_s']:.3f} ({' / '.join(f'{t[k]:.3f}' for k in SPLIT)})" if t else "-"
        tokens = f"{t['tokens']:.0f}" if t else "-"
        line = f"| {r['run']} | {r['task']} | {settings} | {r['steps_done']} | {split} | {tokens} | {evals} |"
        if zero:
            last = f"{r['test_last']['accuracy']:.3f}" if r["test_last"] else "-"
            line += f" {r['test_best']['accuracy']:.3f} ({r['best_step']}) | {last} |"
        lines.append(line)
    if zero:
        lines.append(f"\nBase model on the test set: accuracy {zero['accuracy']:.3f}, "
                     f"loss {zero['loss']:.3f} ({zero['n']} rows).")
        if spread:
            lines.append("\nTest accuracy (%) over seeds, best.gguf and the last adapter:")
            lines += [_spread_line(stem, s) for stem, s in spread.items()]
    return "\n".join(lines) + "\n\n" + made_by(m)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders")
    p.add_argument("--task", help="the runs' task (for scoring --test)")
    p.add_argument("--test", type=Path,
                   help="test file: score the base model, best.gguf and the last adapter on it")
    p.add_argument("--eval-args", default="", help="more `prge-gguf eval` flags, e.g. '--n-gpu-layers -1'")
    p.add_argument("--out", required=True, help="output stem: OUT.json and OUT.md")
    args = p.parse_args()
    if args.test and not args.task:
        p.error("--test needs --task")
    extra = shlex.split(args.eval_args)
    rows = [report(run, args.task, args.test, extra) for run in args.runs]
    zero = score(args.task, args.test, None, extra) if args.test else None
    m, spread = machine(), seed_spread(rows)
    write_outputs(args.out, {"machine": m, "task": args.task, "test": str(args.test), "zero_shot": zero,
                             "runs": rows, "seeds": spread}, table(rows, zero, spread, m))


if __name__ == "__main__":
    main()
