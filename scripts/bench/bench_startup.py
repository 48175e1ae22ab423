"""Start-up time of the command line: wall time of `prge-gguf --help` and `prge-gguf info MODEL`
(the shipped SmolLM2 file) and the modules each imports, for this checkout and, with
--baseline DIR, another one (a git worktree of an older commit) side by side.

    git worktree add /tmp/prge-98a632d 98a632d
    python scripts/bench/bench_startup.py --baseline /tmp/prge-98a632d --out bench/startup

Each run is a fresh `python -m prge_gguf ...` with PYTHONPATH and the working folder set to the
checkout, so that it imports that checkout's package (checked before timing). Every command runs
once untimed first (compiles the checkout's .pyc files, warms the page cache), then N timed runs
alternate between the checkouts so that a drift of the machine's load falls on both alike; the
table gives the median. Modules: what `python -X importtime` lists for one more run (the
interpreter's own start-up modules included, as `python -c pass` shows them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench_common import ROOT, git_commit, machine, made_by, write_outputs  # noqa: E402

# Imports that `--help` and `info` do not need; listed when a command loads one.
HEAVY = ("numpy", "llama_cpp", "torch", "transformers", "tqdm", "prge_gguf.train", "prge_gguf.engine")


def commands() -> dict[str, list[str]]:
    """The timed commands, by label: the interpreter alone (the floor), --help and info."""
    from prge_gguf.models import smollm2_path

    model = str(smollm2_path())
    return {"python -c pass": ["-c", "pass"], "prge-gguf --help": ["-m", "prge_gguf", "--help"],
            "prge-gguf info MODEL": ["-m", "prge_gguf", "info", model]}


def _env(checkout: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(checkout)}


def check_checkout(checkout: Path) -> None:
    """Stop unless `python -m prge_gguf` run as the benchmark runs it imports `checkout`'s package."""
    found = subprocess.run([sys.executable, "-c", "import prge_gguf; print(prge_gguf.__file__)"],
                           cwd=checkout, env=_env(checkout), capture_output=True, text=True, check=True)
    if not Path(found.stdout.strip()).resolve().is_relative_to(checkout):
        sys.exit(f"{checkout}: python imports prge_gguf from {found.stdout.strip()}, not from it")


def run_once(checkout: Path, argv: list[str]) -> float:
    """Wall seconds of one fresh `python ARGV` in `checkout`; stops on a failing command."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=checkout, env=_env(checkout), capture_output=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{checkout}: python {' '.join(argv)} exited {done.returncode}:\n"
                 f"{done.stderr.decode(errors='replace')[-2000:]}")
    return seconds


def imported(checkout: Path, argv: list[str]) -> list[str]:
    """The modules `python ARGV` imports, in order, as `-X importtime` lists them."""
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=checkout, env=_env(checkout),
                          capture_output=True, text=True, check=True)
    # Lines: "import time: <self us> | <cumulative us> | <indent><module>", after a header line.
    return [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
            if line.startswith("import time:") and line.split("|")[0].split(":")[1].strip().isdigit()]


def measure(checkouts: dict[str, Path], n: int) -> list[dict]:
    """For each checkout and command: N timed runs (interleaved), their median and the imports."""
    cmds = commands()
    times: dict[tuple[str, str], list[float]] = {(c, k): [] for c in checkouts for k in cmds}
    for path in checkouts.values():
        for argv in cmds.values():
            run_once(path, argv)  # untimed: .pyc files and the page cache
    for _ in range(n):
        for label, argv in cmds.items():
            for name, path in checkouts.items():
                times[name, label].append(run_once(path, argv))
    rows = []
    for name, path in checkouts.items():
        for label, argv in cmds.items():
            modules = imported(path, argv)
            rows.append({"checkout": name, "dir": str(path), "commit": git_commit(path), "command": label,
                         "seconds": times[name, label], "median_s": statistics.median(times[name, label]),
                         "modules": len(modules),
                         "heavy": [h for h in HEAVY if h in modules or any(m.startswith(h + ".")
                                                                            for m in modules)]})
    return rows


def table(rows: list[dict], n: int, m: dict) -> str:
    """One row a command; this checkout's and the baseline's columns side by side."""
    names = list(dict.fromkeys(r["checkout"] for r in rows))
    by = {(r["checkout"], r["command"]): r for r in rows}
    commit = {r["checkout"]: r["commit"] for r in rows}
    head = "| command | " + " | ".join(
        f"{name} ({commit[name]}): median s | modules | heavy imports" for name in names)
    if len(names) == 2:
        head += " | time, current / baseline"
    lines = [head + " |", "| --- |" + " --- | --- | --- |" * len(names) + " --- |" * (len(names) == 2)]
    for label in dict.fromkeys(r["command"] for r in rows):
        cells = [by[name, label] for name in names]
        line = "| " + label + " | " + " | ".join(
            f"{c['median_s']:.3f} | {c['modules']} | {', '.join(c['heavy']) or 'none'}" for c in cells)
        if len(cells) == 2:
            line += f" | {cells[0]['median_s'] / cells[1]['median_s']:.2f}x"
        lines.append(line + " |")
    return "\n".join([*lines, "", f"Wall time of a fresh `python -m prge_gguf ...` (MODEL: the shipped "
                      f"SmolLM2-135M-Instruct Q4_1), median of {n} runs after one untimed run; modules: "
                      f"`python -X importtime`, the interpreter's own included. Python {m['python']}. "
                      + made_by(m)])


def main() -> None:
    """Measure; print the table, write OUT.json and OUT.md."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20, help="timed runs of each command and checkout")
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help="another checkout (e.g. a git worktree of an older commit) to time beside this one")
    ap.add_argument("--out", default="bench/startup")
    args = ap.parse_args()
    checkouts = {"current": ROOT}
    if args.baseline:
        checkouts["baseline"] = args.baseline.resolve()
    for path in checkouts.values():
        check_checkout(path)
    rows = measure(checkouts, args.n)
    m = machine()
    write_outputs(args.out, {"machine": m, "python": sys.executable, "n": args.n, "rows": rows},
                  table(rows, args.n, m))


if __name__ == "__main__":
    main()
