"""Accuracy at a fixed wall-clock budget: zero-shot, P-RGE at q = 1 and q = 4 with the same
forward rows a step and at q = 1 with batch 64 (llama engine), and first-order LoRA (torch
engine) on all seven projections and on P-RGE's attn_q + attn_v, per task and model, over seeds.

Each training row: a short probe run measures the method's seconds per forward token, the real
run gets the steps that fill `--budget-min` at that rate (so its learning-rate schedule ends with
the budget), a step taking the forward tokens of an average batch of the training data (its
examples tokenized as train does: mean tokens x batch size x forward passes a step), and
scores a validation split of the training data `--evals` times (and at step 0); then the test
set is scored with the adapter that scored best there (MeZO's protocol: a run that never beat
step 0 reports the zero-shot model) and with the final adapter, both on the llama engine (what
llama.cpp users deploy). Finished rows are kept in OUT_DIR/rows.jsonl, so an interrupted run
continues where it stopped; the report tables the run folders of rows that never finished (a bench
stopped by a timeout) apart, with the validation scorings they reached.

Splits (`tuning_split`, from the files under --data-dir, ../shared/data); the sweeps tune on the
same training/validation files, and no test row is read before the final scoring:
- sst2: the shipped 1,000 rows train; 500 other rows of SST-2 train of at least 10 words
  (random.Random(1)) validate: dev holds sentences, SST-2 train mostly short phrases.
- rte, wic: 1,000 train rows (random.Random(0), as the paper samples) train; 500 of the
  remaining train rows validate.
- cb, copa (250 / 400 train rows): train.jsonl shuffled (random.Random(1)), three quarters
  train, one quarter validates.
Test sets: SST-2 dev (872), SuperGLUE val.

    python scripts/bench/bench_accuracy.py --tasks sst2 --models smollm2-135m --seeds 0 --budget-min 10
    python scripts/bench/bench_accuracy.py            # everything: 5 tasks x 2 models x 3 seeds (hours)

Choosing defaults (issue 23) reads no test set: `--tuning-only` reports each row's validation
accuracy (its best scoring and its last) and scores zero-shot on the validation split (give it a
--work of its own: rows.jsonl keys rows by task, model, method and seed, not by what scored them), and
`--budget-tokens N` (or TASK=N for each task) gives every row the steps that fill N forward tokens
instead of the wall time (both columns are reported either way). The forward-only estimators run as
zo-q1-NAME and zo-b64-NAME (NAME of `prge-gguf train --help`'s list), and as zo-b64t-NAME on the
torch engine (zo-b64t: P-RGE there; `--zero-shot-engine torch` scores zero-shot on it too). Every
table has the scored split's majority class beside zero-shot, and each row's predictions per option
(its best adapter's, mean over seeds). E.g.

    python scripts/bench/bench_accuracy.py --tuning-only --tasks sst2 --models smollm2-135m \
        --methods zo-b64 zo-b64-hizoo zo-b64-lozo zo-b64-conmezo fo-qv --budget-min 6

Rows sharing a machine (`--jobs`) slow each other, and with them the probe each row times at its
start, so they get fewer steps than the budget would give one row alone. `--probe-alone` times every
(task, model, method)'s probe first, one at a time with nothing else running (the seeds share it;
kept in WORK/probes.jsonl), converts each row's `--budget-min` into steps at that exclusive
seconds a step, and only then runs the rows `--jobs` at once: every row then trains the steps of
its budget alone, in a longer (shared) wall time, which the table's "train wall" reports.

On a GPU machine: a model given as LABEL=PATH keeps its label in the rows, and each engine's
extra flags go to every command that runs on it:

    python scripts/bench/bench_accuracy.py --models smollm2-135m=/path/SmolLM2-135M-Instruct.Q4_1.gguf \
        --llama-args "--n-gpu-layers -1" --torch-args "--device cuda" --threads 4 --jobs 4
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_common import GpuSlots, machine, write_outputs

from prge_gguf.estimators import ESTIMATORS
from prge_gguf.targets import TARGETS
from prge_gguf.train import batch_indices

DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared beside the checkout
TASK_FILES = {"rte": "RTE", "cb": "CB", "copa": "COPA", "wic": "WiC"}
# The probe's first steps run slow (the mmapped model's pages, allocators growing): with 4 steps and
# all of them timed, Gemma's P-RGE row on the 2-core CPU was probed at 1.72 s a step and ran at
# 1.29, first-order at 5.8 against 5.2, so rows trained 12-25% short of their budget. The timed
# steps give seconds per forward token, not per step (`expected_step`): 8 batches drawn at random are
# no sample of the training set's lengths. Gemma's SST-2 P-RGE probe's median step took 0.74 s and
# 502 forward tokens where the run's steps averaged 528 tokens and took a median 0.84 s until step
# ~825, 1.06 s after (which no probe at the start sees), so the row trained 19.6 minutes of a
# 15-minute budget (bench/accuracy-cpu-15min-2ctx.md); per token, its probe gives 0.79 s a step.
PROBE_STEPS, PROBE_WARMUP = 12, 4
TUNE_ROWS = 500  # validation rows where the training file has them to spare
MIN_WORDS = 10  # SST-2 validation rows: sentences of at least this many words
# method -> train flags; the budget decides --steps. q * batch = 16 forward rows a query pair.
# Tokens a decode: train's fit (its GPU cap, 1536, steps 10-28% faster than 4096:
# bench/sweeps/decode-size-h100.md).
_B64 = ["--q", "1", "--batch-size", "64"]
METHODS = {
    "zo-q1": ["--q", "1", "--batch-size", "16"],
    "zo-q4": ["--q", "4", "--batch-size", "4"],
    # On a GPU a larger batch costs little more time a step and cuts the estimate's noise (docs/method.md).
    "zo-b64": _B64,
    # The baseline at its strongest: all seven projections (P-RGE's default is attn_q + attn_v).
    "fo": ["--engine", "torch", "--optimizer", "adam", "--batch-size", "16", "--targets", ",".join(TARGETS)],
    # First-order on P-RGE's own adapter (attn_q + attn_v): zeroth- against first-order, all else equal.
    "fo-qv": ["--engine", "torch", "--optimizer", "adam", "--batch-size", "16"],
    # Longer budgets (bench/accuracy-18min.md): batch 64 at a constant lr, 1e-2 (RTE's 4000-step run,
    # WiC) or 2e-3 (COPA, whose loss climbs at larger steps). Not in the default --methods.
    "zo-b64c": [*_B64, "--lr-schedule", "constant", "--lr", "1e-2"],
    "zo-b64s": [*_B64, "--lr-schedule", "constant", "--lr", "2e-3"],
}
# The forward-only estimators (--estimator) at zo-q1's and zo-b64's settings: zo-q1-hizoo, zo-b64-lozo, ...
# zo-b64t: zo-b64 on the torch engine, which scores a step's 2q perturbations in one batched forward
# (log-probs equal to llama.cpp's within float tolerance: docs/engines.md); with --budget-tokens its
# rows' accuracy does not depend on how many rows share the GPU.
METHODS["zo-b64t"] = [*_B64, "--engine", "torch"]
METHODS |= {f"{base}-{name}": [*METHODS[base], "--estimator", name]
            for base in ("zo-q1", "zo-b64", "zo-b64t") for name in ESTIMATORS if name != "prge"}
DEFAULT_METHODS = ["zo-q1", "zo-q4", "zo-b64", "fo", "fo-qv"]
# Runs the CLI and reports this process's peak RSS (each row is its own process).
_WRAPPER = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from bench_common import peak_rss_mib; "
            "from prge_gguf.cli import main; rc = main(sys.argv[1:]); print('PEAK_RSS_MIB', peak_rss_mib()); "
            "sys.exit(rc)")
# Prints the tokens of each training example of the settings in argv[1] (JSON), as train tokenizes them.
_EXAMPLE_TOKENS = ("import json, sys; from prge_gguf.inputs import datasets, open_engine, tokenize_all; "
                   "from prge_gguf.settings import resolve; s = resolve(json.loads(sys.argv[1]));\n"
                   "with open_engine(s) as engine: print(json.dumps([ex.n_tokens for ex in "
                   "tokenize_all(engine, datasets(s)[0], s)]))")


# Extra flags for every command, by engine (--llama-args, --torch-args); the data folder (--data-dir).
EXTRA: dict[str, list[str]] = {"llama": [], "torch": []}
# The environment of the row a thread runs (its GPU with --gpus), set for the row's lifetime.
GPU_ENV = threading.local()
# Each task's train/validation flags (tuning_split), written before rows start.
SPLITS: dict[str, list[str]] = {}
# --tuning-only: rows are scored on the validation split and no test set is read.
TUNING_ONLY = False
# --zero-shot-engine: the engine that scores the zero-shot row.
ZERO_SHOT_ENGINE = "llama"


def train_rows(task: str, data_dir: Path, train_max: int = 1000) -> tuple[list[str], list[str]]:
    """(all rows of a SuperGLUE task's train.jsonl, the `train_max` of them this bench trains on)."""
    lines = (data_dir / "superglue" / TASK_FILES[task] / "train.jsonl").read_text().splitlines()
    return lines, random.Random(0).sample(lines, min(train_max, len(lines)))


def tuning_split(task: str, data_dir: Path, work: Path) -> list[str]:
    """--task/--data/--valid flags of `task`'s training and validation split (the module
    docstring), written to `work`, where split files already there are used as they are."""
    work.mkdir(parents=True, exist_ok=True)
    if task == "sst2":
        valid = work / "sst2-tune.tsv"
        if valid.exists():
            return ["--task", "sst2", "--valid", str(valid)]
        from prge_gguf.tasks import builtin_task

        shipped = set(builtin_task("sst2").train_file.read_text().splitlines())
        header, *rows = (data_dir / "sst2" / "train.tsv").read_text().splitlines()
        # Sentences, as in dev (median 19 words); SST-2 train is mostly short phrases (median 7).
        spare = [r for r in rows if r not in shipped and len(r.split("\t")[0].split()) >= MIN_WORDS]
        valid.write_text("\n".join([header, *random.Random(1).sample(spare, TUNE_ROWS)]) + "\n")
        return ["--task", "sst2", "--valid", str(valid)]
    paths = {name: work / f"{task}-tune-{name}.jsonl" for name in ("train", "valid")}
    flags = ["--task", task, "--data", str(paths["train"]), "--valid", str(paths["valid"])]
    if all(p.exists() for p in paths.values()):
        return flags
    lines, bench_rows = train_rows(task, data_dir)
    used = set(bench_rows)
    spare = [line for line in lines if line not in used]
    if len(spare) >= TUNE_ROWS:
        train, valid = bench_rows, random.Random(1).sample(spare, TUNE_ROWS)
    else:
        shuffled = random.Random(1).sample(lines, len(lines))
        cut = len(lines) * 3 // 4
        train, valid = shuffled[:cut], shuffled[cut:]
    for name, rows in (("train", train), ("valid", valid)):
        paths[name].write_text("\n".join(rows) + "\n")
    return flags


def test_args(task: str) -> list[str]:
    """--task/--valid of `task`'s test set: SST-2's dev set (shipped with the task), SuperGLUE's val."""
    if task == "sst2":
        return ["--task", "sst2"]
    return ["--task", task, "--valid", str(DATA_DIR / "superglue" / TASK_FILES[task] / "val.jsonl")]


def _write_whole(path: Path, lines: list[str]) -> None:
    """Write `lines` to `path` by rename: rows running at once rewrite the same file, and a
    plain write let one of them read it empty."""
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def cli(args: list[str], threads: int) -> tuple[str, float]:
    """Run `prge-gguf ARGS` (on the GPU of this thread's row, see GPU_ENV); (stdout, peak RSS MiB)."""
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, str(Path(__file__).parent), *args, "--threads",
                           str(threads)], check=True, capture_output=True, text=True,
                          env=getattr(GPU_ENV, "env", None))
    lines = proc.stdout.strip().splitlines()
    rss = next(float(line.split()[1]) for line in lines if line.startswith("PEAK_RSS_MIB"))
    return "\n".join(line for line in lines if not line.startswith("PEAK_RSS_MIB")), rss


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def zero_shot(task: str, model: str, threads: int) -> dict:
    """Accuracy of the base model (a name or a GGUF path) on the test set, on --zero-shot-engine."""
    m, rss = scored_eval(task, model, None, threads, ZERO_SHOT_ENGINE)
    return {"accuracy": m["accuracy"], "final_accuracy": m["accuracy"], "wall_s": 0.0, "steps": 0,
            "forward_tokens": 0, "peak_rss_mib": rss, "curve": [], "predicted": m["predicted"],
            "final_predicted": m["predicted"]}


def scored_eval(task: str, model: str, adapter: Path | None, threads: int,
                engine: str = "llama") -> tuple[dict, float]:
    """(`prge-gguf eval --json` of `model` with `adapter` or none on the test set, on `engine`;
    peak RSS MiB); with --tuning-only, on the validation split."""
    with_adapter = ["--adapter", str(adapter)] if adapter else []
    scored = SPLITS[task] if TUNING_ONLY else test_args(task)
    flags = ["--engine", "torch", *EXTRA["torch"]] if engine == "torch" else EXTRA["llama"]
    out, rss = cli(["eval", *scored, "--model", model, *with_adapter, "--json", *flags], threads)
    return json.loads(out.splitlines()[-1]), rss


def test_accuracy(task: str, model: str, adapter: Path | None, threads: int) -> tuple[dict, float]:
    """`scored_eval` on the llama engine, what llama.cpp users deploy."""
    return scored_eval(task, model, adapter, threads)


def label_counts(task: str, data_dir: Path) -> tuple[list[str], list[int]]:
    """(the task's option words, how many rows of the scored set, the validation split with
    --tuning-only, else the test set, hold each): the majority-class baseline and the split
    each row's predictions are read against."""
    from prge_gguf.tasks import builtin_task

    t = builtin_task(task)
    flags = SPLITS[task] if TUNING_ONLY else test_args(task)
    path = Path(flags[flags.index("--valid") + 1]) if "--valid" in flags else t.dev_file
    labels = [ex.label for ex in t.examples(path)]
    words = list(t.label_words.values()) if t.label_words else [str(k) for k in range(max(labels) + 1)]
    return words, [labels.count(k) for k in range(len(words))]


def _train_args(task: str, model: str, method: str, seed: int) -> list[str]:
    """`prge-gguf train` flags of a row, all but its steps, evaluations and output folder."""
    engine = "torch" if "torch" in METHODS[method] else "llama"
    return ["train", *SPLITS[task], "--model", model, *METHODS[method], *EXTRA[engine],
            "--seed", str(seed), "--checkpoint-every", "0"]


def probe_step(task: str, label: str, model: str, method: str, seed: int, work: Path,
               threads: int) -> dict:
    """A short run of the row's own settings, its warm-up steps left out, read by `expected_step`
    as what an average step of the whole run costs."""
    probe = work / f"probe-{task}-{label}-{method}-{seed}"
    shutil.rmtree(probe, ignore_errors=True)  # from a probe stopped midway
    cli([*_train_args(task, model, method, seed), "--steps", str(PROBE_STEPS), "--eval-every", "0",
         "--valid", str(_one_example(task, work)), "--out", str(probe)], threads)
    timed = [r for r in _rows(probe) if "loss" in r][PROBE_WARMUP:]
    cfg = json.loads((probe / "config.json").read_text())["train"]
    lengths = example_tokens(task, model)
    batches = [[lengths[i] for i in batch_indices(len(lengths), cfg["batch_size"], cfg["seed"], step)]
               for step in (r["step"] - 1 for r in timed)]  # metrics rows count steps from 1
    return expected_step(timed, batches, statistics.mean(lengths))


def expected_step(timed: list[dict], batches: list[list[int]], mean_tokens: float) -> dict:
    """An average step of a run, from a probe's `timed` steps (metrics rows with `step_s` and
    `tokens`), the tokens of each one's batch examples (`batches`) and the mean tokens of the
    training examples (`mean_tokens`): its forward tokens (`tokens`: forward passes over each
    example x batch size x `mean_tokens`, since a run's epochs visit every example) and its seconds
    (`step_s`: those tokens at the timed steps' seconds per forward token, `s_per_token`)."""
    passes = sum(r["tokens"] for r in timed) / sum(map(sum, batches))  # 2q for P-RGE, 1 for backprop
    tokens = passes * len(batches[0]) * mean_tokens
    s_per_token = sum(r["step_s"] for r in timed) / sum(r["tokens"] for r in timed)
    return {"step_s": s_per_token * tokens, "tokens": tokens, "s_per_token": s_per_token}


@functools.cache
def example_tokens(task: str, model: str) -> list[int]:
    """The tokens of each training example of `task`'s split for `model`, as `prge-gguf train`
    tokenizes them (llama.cpp's tokenizer; the torch engine's matches it, tests/test_torch_engine.py),
    in a process of its own like every command here."""
    flags = SPLITS[task]
    settings = {flag.removeprefix("--"): value for flag, value in zip(flags[::2], flags[1::2], strict=True)}
    settings |= {"model": model, "engine": "llama", "n_gpu_layers": 0, "threads": 1}
    proc = subprocess.run([sys.executable, "-c", _EXAMPLE_TOKENS, json.dumps(settings)], check=True,
                          capture_output=True, text=True, env=getattr(GPU_ENV, "env", None))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def budget_steps(probe: dict, budget_s: float, budget_tokens: float = 0) -> int:
    """The steps that fill `budget_tokens` forward tokens (if given) or `budget_s` seconds at
    `probe`'s (`probe_step`'s record) tokens or seconds a step."""
    per_step = probe["tokens"] if budget_tokens else probe["step_s"]
    return max(1, int((budget_tokens or budget_s) / per_step))


def train_row(task: str, label: str, model: str, method: str, seed: int, budget_s: float, work: Path,
              threads: int, evals: int, val_size: int, budget_tokens: float = 0,
              probe: dict | None = None) -> dict:
    """Train `method` for `budget_s` of training wall time (or, given, `budget_tokens` forward
    tokens), then score the test set with the adapter of the best validation score and with the
    final one; with --tuning-only, report those two validation scores instead. The steps come
    from `probe` (`probe_step`'s record, e.g. one run alone before the rows), else from a probe
    run at the row's start."""
    probe = probe or probe_step(task, label, model, method, seed, work, threads)
    steps = budget_steps(probe, budget_s, budget_tokens)
    run = work / f"run-{task}-{label}-{method}-{seed}"
    shutil.rmtree(run, ignore_errors=True)  # from a row stopped midway (only finished rows are kept)
    _, rss = cli([*_train_args(task, model, method, seed), "--steps", str(steps),
                  "--eval-every", str(max(1, steps // evals)), "--eval-size", str(val_size),
                  "--out", str(run)], threads)
    rows = _rows(run)
    final = next(r for r in rows if "final_eval_accuracy" in r)
    steps_run = [r for r in rows if "loss" in r]
    evaluated = [r for r in rows if "eval_accuracy" in r]
    best = max(evaluated, key=lambda r: r["eval_accuracy"])  # the first of equals, as best.gguf
    if TUNING_ONLY:
        accuracy, final_accuracy = best["eval_accuracy"], evaluated[-1]["eval_accuracy"]
        predicted, final_predicted = best.get("eval_predicted"), evaluated[-1].get("eval_predicted")
    else:
        m = test_accuracy(task, model, run / "best.gguf", threads)[0]
        # best.gguf is the final adapter when the last evaluation won: one test scoring is enough
        f = m if best["step"] == steps else test_accuracy(task, model, run / "adapter.gguf", threads)[0]
        accuracy, final_accuracy = m["accuracy"], f["accuracy"]
        predicted, final_predicted = m["predicted"], f["predicted"]
    return {"accuracy": accuracy, "final_accuracy": final_accuracy, "best_step": best["step"],
            "predicted": predicted, "final_predicted": final_predicted,
            "wall_s": final["train_s"], "steps": steps, "probe_step_s": probe["step_s"],
            "forward_tokens": sum(r["tokens"] for r in steps_run), "peak_rss_mib": rss,
            "curve": [[r["wall"], r["eval_accuracy"]] for r in evaluated]}


def read_probes(work: Path) -> dict[tuple, dict]:
    """WORK/probes.jsonl (--probe-alone's probes) by (task, model label, method); {} if none."""
    path = work / "probes.jsonl"
    if not path.exists():
        return {}
    return {(r["task"], r["model"], r["method"]): r for r in map(json.loads, path.read_text().splitlines())}


def stopped_runs(work: Path, done: list[dict], budget_s: float, budgets: dict[str, float]) -> list[dict]:
    """The run folders in WORK whose row never finished (the bench stopped by a timeout, say): the
    validation scorings they reached, for the report's table of stopped rows; with --probe-alone's
    probes, also the steps their budget gave them."""
    finished = {(r["task"], r["model"], r["method"], r["seed"]) for r in done}
    probes, stopped = read_probes(work), []
    for run in sorted(work.glob("run-*")):
        name, seed = run.name.removeprefix("run-").rsplit("-", 1)
        method = max((m for m in METHODS if name.endswith("-" + m)), key=len, default=None)
        if method is None or not (run / "metrics.jsonl").exists():
            continue
        task, label = name.removesuffix("-" + method).split("-", 1)
        if (task, label, method, int(seed)) in finished:
            continue
        rows, probe = _rows(run), probes.get((task, label, method))
        evaluated = [r for r in rows if "eval_accuracy" in r]
        stopped.append({"task": task, "model": label, "method": method, "seed": int(seed),
                        "steps_run": sum("loss" in r for r in rows),
                        "steps": budget_steps(probe, budget_s, budgets.get(task, 0.0)) if probe else None,
                        "wall_s": max((r["wall"] for r in rows if "wall" in r), default=0.0),
                        "scorings": [[r["step"], r["eval_accuracy"]] for r in evaluated],
                        "curve": [[r["wall"], r["eval_accuracy"]] for r in evaluated]})
    return stopped


def stopped_table(stopped: list[dict]) -> str:
    """Markdown: each stopped row's steps (run / its budget's), wall time and validation scorings."""
    lines = ["Stopped before the end of their budget (not in the table above): validation accuracy at each "
             "scoring reached (step: accuracy; step 0 is the zero-shot model on the row's engine).", "",
             "| task | model | method | seed | steps run / budget's | train wall so far (min) | "
             "validation scorings |", "|" + " --- |" * 7]
    for r in stopped:
        scorings = ", ".join(f"{step}: {100 * acc:.1f}" for step, acc in r["scorings"])
        lines.append(f"| {r['task']} | {r['model']} | {r['method']} | {r['seed']} | {r['steps_run']} / "
                     f"{r['steps'] or '?'} | {r['wall_s'] / 60:.1f} | {scorings} |")
    return "\n".join(lines)


def probes_alone(keys: list[tuple], models: dict[str, str], work: Path, threads: int) -> dict[tuple, dict]:
    """--probe-alone: `probe_step` for each (task, model label, method) of `keys`, one at a time
    before any row starts, so that no other process slows it (seeds share their method's probe;
    under --jobs the rows' own probes would share the machine and see slow steps, and the rows
    would get too few steps). Kept in WORK/probes.jsonl: a rerun reuses them. A probe that fails
    is left out, and with it its rows."""
    path = work / "probes.jsonl"
    probes = read_probes(work)
    for task, label, method in dict.fromkeys(keys):
        if (task, label, method) in probes:
            continue
        try:
            probe = probe_step(task, label, models[label], method, 0, work, threads)
        except subprocess.CalledProcessError as e:
            print(f"probe {task} {label} {method}: failed (exit {e.returncode}):\n{(e.stderr or '')[-2000:]}",
                  file=sys.stderr, flush=True)
            continue
        probes[(task, label, method)] = record = {"task": task, "model": label, "method": method, **probe}
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        print(f"probe {task} {label} {method} alone: {probe['step_s']:.3f} s a step", file=sys.stderr,
              flush=True)
    return probes


def _one_example(task: str, work: Path) -> Path:
    """A one-example held-out file for probe runs (their final evaluation is not needed)."""
    source = Path(SPLITS[task][SPLITS[task].index("--valid") + 1])
    path = work / f"{task}-probe-valid{source.suffix}"
    _write_whole(path, source.read_text().splitlines()[: 2 if source.suffix == ".tsv" else 1])  # TSV: header
    return path


def _split(words: list[str], counts: list[float]) -> str:
    """'Yes 120 / No 380': how many rows went to each option."""
    return " / ".join(f"{w} {c:.0f}" for w, c in zip(words, counts, strict=True))


def summarize(rows: list[dict], classes: dict[str, tuple[list[str], list[int]]] | None = None,
              ) -> tuple[list[dict], str]:
    """Mean and spread over seeds per (task, model, method), and the Markdown table; with
    `classes` (task -> label_counts), a majority-class row per task and model, and each row's
    predictions per option (the best adapter's, mean over seeds)."""
    classes = classes or {}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["model"], r["method"]), []).append(r)
    for task, model in sorted({(t, m) for t, m, _ in groups}):
        if task in classes:  # the label prior: every row answered with the most frequent option
            words, counts = classes[task]
            top = max(range(len(counts)), key=counts.__getitem__)
            split = [sum(counts) if k == top else 0 for k in range(len(counts))]
            groups[(task, model, "majority")] = [{"accuracy": counts[top] / sum(counts), "steps": 0,
                                                  "wall_s": 0.0, "forward_tokens": 0, "peak_rss_mib": 0.0,
                                                  "predicted": split}]
    summary = []
    lines = ["| task | model | method | accuracy (mean ± sd, seeds) | final adapter | steps "
             "| train wall (min) | forward tokens | peak RSS (MiB) | predicted (best adapter) |",
             "|" + " --- |" * 10]
    for (task, model, method), rs in sorted(groups.items()):
        acc = [r["accuracy"] for r in rs]
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        s = {"task": task, "model": model, "method": method, "seeds": len(rs),
             "accuracy_mean": statistics.mean(acc), "accuracy_sd": sd,
             # rows of before the validation split scored their final adapter only
             "final_mean": statistics.mean(r.get("final_accuracy", r["accuracy"]) for r in rs),
             "steps": statistics.mean(r["steps"] for r in rs),
             "wall_min": statistics.mean(r["wall_s"] for r in rs) / 60,
             "forward_tokens": statistics.mean(r["forward_tokens"] for r in rs),
             "peak_rss_mib": max(r["peak_rss_mib"] for r in rs)}
        picks = [r["predicted"] for r in rs if r.get("predicted")]  # rows of before it was recorded: none
        if picks and len({len(p) for p in picks}) == 1:
            s["predicted_mean"] = [statistics.mean(col) for col in zip(*picks, strict=True)]
        split = ""
        if "predicted_mean" in s:
            words = classes[task][0] if task in classes else [str(k) for k in range(len(s["predicted_mean"]))]
            split = _split(words, s["predicted_mean"])
        summary.append(s)
        lines.append(f"| {task} | {model} | {method} | {100 * s['accuracy_mean']:.1f} ± {100 * sd:.1f} "
                     f"({len(rs)}) | {100 * s['final_mean']:.1f} | {s['steps']:.0f} | {s['wall_min']:.1f} | "
                     f"{s['forward_tokens']:.3g} | {s['peak_rss_mib']:.0f} | {split} |")
    return summary, "\n".join(lines)


def probe_note(by_tokens: bool, alone_jobs: int | None) -> str:
    """How the training rows' steps were set, and what their train wall is; `alone_jobs`: the rows
    run at once after --probe-alone's probes (None without it)."""
    fill = ("each row's steps fill the budget at the forward tokens of an average step of its training data "
            "(the examples' mean tokens x batch size x forward passes a step)")
    if not by_tokens:
        fill += " and the seconds per forward token"
    probe = f"of a {PROBE_STEPS}-step probe ({PROBE_WARMUP} warm-up)"
    if alone_jobs is None:
        return f"{fill} {probe} run at its start."
    return (f"{fill} {probe} run alone on the machine before any row started (--probe-alone; one probe "
            "per task, model and method, the seeds sharing it: WORK/probes.jsonl, probe_step_s in the JSON "
            f"rows); then the rows ran {alone_jobs} at once, so their train wall is the wall of a shared "
            "machine, longer than the budget.")


def plot(rows: list[dict], path: Path) -> None:
    """Validation accuracy (held-out training rows, step 0 = zero-shot) against training wall time;
    rows stopped midway (`stopped_runs`) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["task"], r["model"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (task, model) in zip(axes[0], panels, strict=True):
        for r in rows:
            if (r["task"], r["model"]) == (task, model) and r["curve"]:
                xs, ys = zip(*r["curve"], strict=True)
                stopped = "steps_run" in r  # a stopped_runs record: dashed
                ax.plot([x / 60 for x in xs], ys, marker=".", linestyle="--" if stopped else "-",
                        label=f"{r['method']} s{r['seed']}{' (stopped)' if stopped else ''}")
        ax.set(title=f"{task}, {model}", xlabel="training wall time (min)", ylabel="validation accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    global DATA_DIR, TUNING_ONLY
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["sst2", "rte", "cb", "copa", "wic"])
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"],
                   help="model names or GGUF paths; LABEL=PATH names a path's rows LABEL")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                   help=f"of {', '.join(METHODS)} and --define's")
    p.add_argument("--define", action="append", default=[], metavar="NAME=FLAGS",
                   help="one more method: its train flags (a candidate from a sweep), e.g. "
                        "'zo-all=--batch-size 64 --targets attn_q,attn_v,ffn_up'")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget-min", type=float, default=10.0, help="training wall time per row")
    p.add_argument("--budget-tokens", nargs="+", default=[],
                   help="forward tokens per row instead of --budget-min (equal forward work, not time): "
                        "N for every task, or TASK=N each (e.g. sst2=2.2e6 rte=4e6)")
    p.add_argument("--zero-shot-engine", choices=("llama", "torch"), default="llama",
                   help="the engine that scores the zero-shot rows (torch: with --torch-args)")
    p.add_argument("--tuning-only", action="store_true",
                   help="score rows (and zero-shot) on the validation split; read no test set")
    p.add_argument("--evals", type=int, default=5, help="validation scorings during training (and step 0)")
    p.add_argument("--val-size", type=int, default=0, help="validation rows a scoring (0 = all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--jobs", type=int, default=1, help="rows run at once (each with --threads)")
    p.add_argument("--gpus", type=int, default=0, help="spread the rows run at once over this many GPUs")
    p.add_argument("--probe-alone", action="store_true",
                   help="time each (task, model, method)'s probe alone on the machine before any row "
                        "starts; the rows then run --jobs at once, their steps filling --budget-min at the "
                        "probe's seconds a step (their train wall: the longer wall of a shared machine)")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR,
                   help="folder holding superglue/{RTE,CB,COPA,WiC}/{train,val}.jsonl")
    p.add_argument("--llama-args", default="", help="extra flags for every llama-engine command, e.g. "
                                                    "'--n-gpu-layers -1'")
    p.add_argument("--torch-args", default="", help="extra flags for every torch-engine command, e.g. "
                                                    "'--device cuda'")
    p.add_argument("--splits", type=Path, help="folder of the split files (default WORK/splits); files "
                   "already there are used as they are")
    p.add_argument("--report-only", action="store_true", help="run nothing: summarize WORK/rows.jsonl")
    p.add_argument("--work", type=Path, default=Path("runs/bench_accuracy"))
    p.add_argument("--out", default="bench/accuracy")
    args = p.parse_args()
    for spec in args.define:
        name, sep, flags = spec.partition("=")
        try:
            split = shlex.split(flags)
        except ValueError as e:  # an unclosed quote
            p.error(f"--define {spec!r}: {e}")
        if not (sep and name and split) or name in METHODS:
            p.error(f"--define {spec!r}: expected NAME=FLAGS with a new NAME")
        METHODS[name] = split
    if unknown := sorted(set(args.methods) - set(METHODS)):
        p.error(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(METHODS)}")
    DATA_DIR, TUNING_ONLY = args.data_dir, args.tuning_only
    global ZERO_SHOT_ENGINE
    ZERO_SHOT_ENGINE = args.zero_shot_engine
    try:
        budgets = {t: float(v) for t, v in (b.split("=", 1) for b in args.budget_tokens if "=" in b)}
        flat = [float(b) for b in args.budget_tokens if "=" not in b]
    except ValueError as e:
        p.error(f"--budget-tokens {' '.join(args.budget_tokens)}: {e}; expected N or TASK=N")
    if len(flat) > 1 or (flat and budgets):
        p.error(f"--budget-tokens {' '.join(args.budget_tokens)}: expected one N, or TASK=N for each task")
    budgets = budgets or dict.fromkeys(args.tasks, flat[0] if flat else 0.0)
    if args.budget_tokens and (missing := [t for t in args.tasks if not budgets.get(t)]):
        p.error(f"--budget-tokens: no budget for {', '.join(missing)}")
    EXTRA.update(llama=shlex.split(args.llama_args), torch=shlex.split(args.torch_args))
    models = dict(m.split("=", 1) if "=" in m else (m, m) for m in args.models)  # label -> name or path
    args.work.mkdir(parents=True, exist_ok=True)
    # The report reads the splits too (majority class, labels per option); --report-only goes without
    # them where the data is not there.
    try:
        SPLITS.update({t: tuning_split(t, DATA_DIR, args.splits or args.work / "splits") for t in args.tasks})
        classes = {t: label_counts(t, DATA_DIR) for t in args.tasks}
    except OSError as e:
        if not args.report_only:
            raise
        print(f"no majority-class rows ({e})", file=sys.stderr)
        classes = {}
    done_file = args.work / "rows.jsonl"
    done = [json.loads(line) for line in done_file.read_text().splitlines()] if done_file.exists() else []
    key = lambda r: (r["task"], r["model"], r["method"], r["seed"])  # noqa: E731
    have = {key(r) for r in done}
    todo = [(t, m, "zero-shot", 0) for t in args.tasks for m in models]
    # Seed by seed: a run stopped midway leaves every method's first seeds, not one method's all.
    todo += [(t, m, meth, s) for s in args.seeds for t in args.tasks for m in models for meth in args.methods]
    todo = [] if args.report_only else [k for k in todo if k not in have]
    if not done and not todo:
        p.error(f"nothing to report: {done_file} holds no rows")
    info = {**machine(), "host": platform.node()}
    where = (f"GPU {info['gpu'].split(',')[0]}, " if info["gpu"] else "") + \
        f"CPU {info['cpu']} ({info['cores']} cores)"

    gpus = GpuSlots(args.gpus)
    probes: dict[tuple, dict] = {}
    if args.probe_alone:
        probes = probes_alone([k[:3] for k in todo if k[2] != "zero-shot"], models, args.work, args.threads)
        todo = [k for k in todo if k[2] == "zero-shot" or k[:3] in probes]

    def run(k: tuple) -> dict | None:
        task, label, method, seed = k
        try:
            with gpus.env() as GPU_ENV.env:
                result = zero_shot(task, models[label], args.threads) if method == "zero-shot" \
                    else train_row(task, label, models[label], method, seed, args.budget_min * 60, args.work,
                                   args.threads, args.evals, args.val_size, budgets.get(task, 0.0),
                                   probes.get(k[:3]))
        except subprocess.CalledProcessError as e:  # left out of rows.jsonl: a rerun tries it again
            print(f"{k}: failed (exit {e.returncode}):\n{(e.stderr or '')[-2000:]}", file=sys.stderr,
                  flush=True)
            return None
        row = {"task": task, "model": label, "method": method, "seed": seed, "machine": where,
               "scored": "validation" if TUNING_ONLY else "test", "probe_alone": args.probe_alone,
               "jobs": args.jobs, **result}
        with done_file.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{k}: accuracy {row['accuracy']:.3f}", file=sys.stderr, flush=True)
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        done += [row for row in pool.map(run, todo) if row is not None]
    summary, table = summarize(done, classes)
    stopped = stopped_runs(args.work, done, args.budget_min * 60, budgets)
    try:
        plot(done + stopped, Path(args.out).with_suffix(".png"))
    except ImportError as e:  # no matplotlib (a GPU image): plot() can be called later on rows.jsonl
        print(f"no plot: {e}", file=sys.stderr)
    extra = "; ".join(f"{engine} engine: `{' '.join(flags)}`" for engine, flags in EXTRA.items() if flags)
    # Each row names the machine it ran on: a report may gather rows of several runs.
    machines = "; ".join(sorted({r.get("machine", "not recorded") for r in done}))
    budget = (", ".join(f"{t} {n:,.0f}" for t, n in budgets.items()) + " forward tokens") \
        if args.budget_tokens else f"{args.budget_min:g} min of training"
    scoring = (f"accuracy: the validation split's best of {args.evals} scorings and step 0, final adapter: "
               "its last; no test set read (--tuning-only)") if TUNING_ONLY else \
        ("accuracy: the test set scored with the adapter of the best validation score "
         f"({args.evals} scorings and step 0), final adapter: with the last; "
         "test sets: SST-2 dev (872), SuperGLUE val")
    steps_note = probe_note(bool(args.budget_tokens), args.jobs if args.probe_alone else None)
    footer = (f"Budget {budget} per row ({args.jobs} rows at once"
              f"{f' over {args.gpus} GPUs' if args.gpus else ''}, {args.threads} threads each); {scoring}; "
              f"{steps_note} Plot: {Path(args.out).with_suffix('.png').name}. Machines: {machines}; "
              f"llama-cpp-python {info['llama_cpp_python']}, commit {info['git_commit']}."
              + (f" Extra flags: {extra}." if extra else ""))
    write_outputs(args.out, {"machine": info, "budget_min": args.budget_min, "threads": args.threads,
                             "budget_tokens": budgets if args.budget_tokens else 0,
                             "tuning_only": TUNING_ONLY, "zero_shot_engine": ZERO_SHOT_ENGINE,
                             "jobs": args.jobs, "gpus": args.gpus, "probe_alone": args.probe_alone,
                             "extra_args": EXTRA, "models": models,
                             "summary": summary, "rows": done, "stopped": stopped},
                  "\n\n".join([table, *([stopped_table(stopped)] if stopped else []), footer]))


if __name__ == "__main__":
    main()
