"""The README's headline: zero-shot vs `prge-gguf train` with its defaults on SST-2 dev (all 872).

Runs `prge-gguf eval --task sst2 --json` and `prge-gguf train --task sst2 --out RUN_DIR`
(each skipped when its output already exists), then writes bench/sst2_default.json
and bench/sst2_default.md. Run nothing else on the machine meanwhile: the wall
time is part of the result. The command's wall time (model load, training, the final
evaluation on SST-2 dev) is what README command 1 takes after its install.

    python scripts/bench/bench_sst2_default.py --run-dir runs/sst2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench_common import machine


def _cli(*args: str, stdout=None) -> None:
    subprocess.run([sys.executable, "-m", "prge_gguf", *args], check=True, stdout=stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/sst2")
    p.add_argument("--out", default="bench/sst2_default")
    args = p.parse_args()
    run_dir = Path(args.run_dir)
    zeroshot_file = run_dir.with_name(run_dir.name + "-zeroshot.json")
    run_dir.parent.mkdir(parents=True, exist_ok=True)  # runs/ of a fresh clone
    if not zeroshot_file.exists():
        with zeroshot_file.open("w") as fh:
            _cli("eval", "--task", "sst2", "--json", stdout=fh)
    command_s, machine_file = run_dir / "command_s.txt", run_dir / "machine.json"
    if not (run_dir / "metrics.jsonl").exists():
        # The machine and commit of the run itself, taken before this script writes its tracked
        # outputs (which mark the checkout dirty) and kept beside it (train takes an empty --out).
        ran_on = machine()
        t0 = time.perf_counter()
        _cli("train", "--task", "sst2", "--out", str(run_dir))
        command_s.write_text(f"{time.perf_counter() - t0:.1f}\n")
        machine_file.write_text(json.dumps(ran_on, indent=2) + "\n")
    zero = json.loads(zeroshot_file.read_text())
    config = json.loads((run_dir / "config.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = next(r for r in rows if "final_eval_accuracy" in r)
    steps = [r for r in rows if "loss" in r]
    result = {
        "machine": json.loads(machine_file.read_text()) | {"engine": config.get("machine", {})},
        "model": config.get("source", {}).get("model", config.get("model")),
        "settings": config["train"],
        "zero_shot": {"accuracy": zero["accuracy"], "loss": zero["loss"], "n": zero["n"]},
        "trained": {"accuracy": final["final_eval_accuracy"], "loss": final["final_eval_loss"],
                    "n": final["eval_n"]},
        "gain_points": 100 * (final["final_eval_accuracy"] - zero["accuracy"]),
        "train_wall_s": final["train_s"],
        "command_wall_s": float(command_s.read_text()),
        "mean_step_s": sum(r["step_s"] for r in steps) / len(steps),
        "evals": [(r["step"], r["eval_accuracy"]) for r in rows if "eval_accuracy" in r],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    s, m = result["settings"], result["machine"]
    # config.json records --threads and --parallel as given (None: train's defaults for the machine).
    flags = ", ".join(f"--{k} {m['engine'].get(k) or 'default'}" for k in ("threads", "parallel"))
    table = "\n".join([
        "| model | SST-2 dev (872) zero-shot | after `prge-gguf train` | gain | training wall time "
        "| whole command (load, train, final eval) |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {Path(result['model']).name} | {100 * zero['accuracy']:.1f}% | "
        f"{100 * final['final_eval_accuracy']:.1f}% | +{result['gain_points']:.1f} points | "
        f"{final['train_s'] / 60:.1f} min ({len(steps)} steps, {result['mean_step_s']:.2f} s/step) "
        f"| {result['command_wall_s'] / 60:.1f} min |",
        "",
        f"Settings: {s['steps']} steps, q {s['q']}, batch {s['batch_size']}, lr {s['lr']} "
        f"({s['lr_schedule']}), eps {s['eps']}, loss {s['loss']}, LoRA-FA r {s['rank']} "
        f"alpha {s['alpha']} on {', '.join(s['targets'])}; seed {s['seed']}. "
        f"Machine: {m['cpu']}, {m['cores']} cores; llama.cpp CPU ({flags}), llama-cpp-python "
        f"{m['llama_cpp_python']}; commit {m['git_commit']}. One run.",
    ])
    Path(args.out + ".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
