"""The estimator comparison at equal forward tokens, from bench_accuracy work folders, finished or
stopped midway: each task's rows are read at the last validation scoring that every zeroth-order
row of the task reached. bench_accuracy spaces a row's scorings evenly over its token budget, so
scoring i of every row sharing a budget comes after the same forward tokens (i/evals of it),
whatever its estimator's forwards a step. Per row: the best validation accuracy up to that scoring
(step 0, the zero-shot model, included: MeZO's selection), the accuracy at it, the predictions per
option of the best, steps, tokens and training wall time at it; with the validation split's
majority class and the zero-shot row beside them. Reads no test set.

    python scripts/bench/report_estimators.py WORK_ZO WORK_FO --tasks sst2 wic rte cb \
        --splits tune --out bench/estimators-tuning
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import bench_accuracy as ba
from bench_common import write_outputs


def curve(run: Path) -> dict:
    """A run folder's validation scorings: step, accuracy, predictions, tokens and wall time so far."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tokens, wall, out = 0, 0.0, []
    for r in rows:
        if "step_s" in r:
            tokens, wall = tokens + r["tokens"], r["wall"]
        if "eval_accuracy" in r:
            out.append({"step": r["step"], "accuracy": r["eval_accuracy"], "predicted": r["eval_predicted"],
                        "tokens": tokens, "train_s": wall})
    return {"evals": out, "steps_run": sum("step_s" in r for r in rows),
            "finished": any("final_eval_accuracy" in r for r in rows)}


def at(c: dict, k: int) -> dict:
    """Row `c` read at its scoring `k`: the best so far (the first of equals) and the k-th."""
    seen = c["evals"][: k + 1]
    best = max(seen, key=lambda e: e["accuracy"])
    return {"best": best["accuracy"], "best_step": best["step"], "predicted": best["predicted"],
            "at_k": seen[-1]["accuracy"], "step": seen[-1]["step"], "tokens": seen[-1]["tokens"],
            "train_s": seen[-1]["train_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", nargs="+", type=Path, help="bench_accuracy --work folders")
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--splits", type=Path, required=True, help="the tuning_split files the rows used")
    p.add_argument("--data-dir", type=Path, default=ba.DATA_DIR)
    p.add_argument("--out", default="bench/estimators-tuning")
    args = p.parse_args()
    ba.TUNING_ONLY = True
    ba.SPLITS.update({t: ba.tuning_split(t, args.data_dir, args.splits) for t in args.tasks})
    runs: dict[tuple, dict] = {}
    zero: dict[str, dict] = {}
    for work in args.work:
        for line in (work / "rows.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["method"] == "zero-shot":
                zero[r["task"]] = r
        for run in sorted(work.glob("run-*")):
            _, task, *rest = run.name.split("-")
            seed, name = int(rest[-1]), "-".join(rest[:-1])
            method = max((m for m in ba.METHODS if name.endswith("-" + m)), key=len)
            runs[(task, method, seed)] = curve(run)
    result, lines = {"machines": sorted({r.get("machine", "?") for r in zero.values()}), "tasks": {}}, []
    head = ("| task | method | best validation (mean ± sd, seeds) | at the scoring | steps | "
            "forward tokens | train wall (min) | predicted (best) |")
    for task in args.tasks:
        words, counts = ba.label_counts(task, args.data_dir)
        mine = {k: c for k, c in runs.items() if k[0] == task}
        zo = [len(c["evals"]) - 1 for (_, m, _), c in mine.items() if m.startswith("zo")]
        k = min(zo)
        top = max(range(len(counts)), key=counts.__getitem__)
        t = {"scoring": k, "labels": dict(zip(words, counts, strict=True)),
             "majority": counts[top] / sum(counts), "zero_shot": zero[task]["accuracy"],
             "zero_shot_predicted": zero[task]["predicted"], "methods": {}}
        lines += [f"**{task}** (validation {sum(counts)} rows: {ba._split(words, counts)}; read at scoring "
                  f"{k} of 5)", "", head, "|" + " --- |" * 8,
                  f"| {task} | majority class | {100 * t['majority']:.1f} | | | | | "
                  f"{words[top]} {sum(counts)} |",
                  f"| {task} | zero-shot | {100 * t['zero_shot']:.1f} | | | | | "
                  f"{ba._split(words, zero[task]['predicted'])} |"]
        for method in sorted({m for _, m, _ in mine}):
            curves = {s: c for (_, m, s), c in sorted(mine.items()) if m == method}
            read = [at(c, k) for c in curves.values() if len(c["evals"]) > k]  # seeds that got there
            if not read:
                continue
            t["methods"][method] = {"read": read, "curves": curves}
            best = [r["best"] for r in read]
            sd = f" ± {100 * statistics.stdev(best):.1f}" if len(best) > 1 else ""
            m = {key: statistics.mean(r[key] for r in read) for key in ("at_k", "step", "tokens", "train_s")}
            picks = [statistics.mean(col) for col in zip(*(r["predicted"] for r in read), strict=True)]
            lines.append(f"| {task} | {method} | {100 * statistics.mean(best):.1f}{sd} ({len(best)}) | "
                         f"{100 * m['at_k']:.1f} | {m['step']:.0f} | {m['tokens']:.3g} | "
                         f"{m['train_s'] / 60:.1f} | {ba._split(words, picks)} |")
        lines.append("")
        result["tasks"][task] = t
    write_outputs(args.out, result, "\n".join(lines).rstrip())


if __name__ == "__main__":
    main()
