"""Speed and memory of a training step against its limit and against the torch alternatives.

One run, one machine. Every variant runs in its own process (peak RSS is per process); the
processes alternate over `--repeats` rounds, and each reports the median of its timed steps
(after a warm-up step). All variants train on the same SST-2 batches (16 examples, seed 0).

- limit: llama.cpp's own `llama_decode` time for exactly the token batches of a step (the 2q
  evaluations, no adapter, logits only where scored): no trainer can beat it.
- llama step: a prge-gguf P-RGE step (llama engine), split into decode (with the adapter),
  adapter swaps, logits -> log-probs, and the rest (Python: perturbing, updating, batching).
- llama step, 2 contexts: the same step with the 2q evaluations spread over two contexts of
  one thread each, decoded from two Python threads (outer-loop parallelism) against one
  context of two threads.
- torch zo: the torch engine's P-RGE step (fp32, all 2q perturbations in one forward).
- torch fo: a first-order LoRA step (backprop through the fp32 model).
Contexts are sized as `prge-gguf train` sizes them (`data.decode_size`: a typical batch, here
320 tokens). Adapters: LoRA-FA rank 8 on the default targets (attn_q, attn_v); variants ending
in -all7 put it on all seven projections (the first-order baseline of docs/benchmarks.md trains those).
Models: the shipped SmolLM2-135M-Instruct Q4_1; the same re-quantized by llama.cpp's
`llama_model_quantize` (allow_requantize: a Q4_1 source, labelled as such) to Q8_0, Q4_0 and
F16; and random-weight GGUFs of real 360M and 1.1B shapes (prge_gguf/synthetic.py: for
speed only, never accuracy).

    python scripts/bench/bench_speed.py                # -> bench/speed.{json,md}; ~25 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from bench_common import machine, peak_rss_mib, write_outputs

BATCH = 16


def _batches(engine, steps: int):
    """Tokenized SST-2 training batches of steps 0..steps-1 (the training loop's order, seed 0)."""
    from prge_gguf.tasks import builtin_task, tokenize
    from prge_gguf.train import batch_indices

    task = builtin_task("sst2")
    examples = task.examples(task.train_file)
    out = []
    for step in range(steps):
        out.append([tokenize(engine, examples[i]) for i in batch_indices(len(examples), BATCH, 0, step)])
    return out


def _train_context(engine) -> int:
    """The context `prge-gguf train --task sst2` sizes from its data (train and dev sets)."""
    from prge_gguf.data import decode_size
    from prge_gguf.settings import CPU_MAX_N_CTX
    from prge_gguf.tasks import builtin_task, tokenize

    task = builtin_task("sst2")
    train, dev = ([tokenize(engine, ex) for ex in task.examples(f)] for f in (task.train_file, task.dev_file))
    return decode_size(train, dev, BATCH, CPU_MAX_N_CTX)


def _adapter(engine, all_targets: bool):
    """LoRA-FA rank 8 on the default targets (attn_q, attn_v), or on all seven projections."""
    from prge_gguf.lora import init_lora_fa
    from prge_gguf.targets import DEFAULT_TARGETS, TARGETS

    adapter = init_lora_fa(engine.header, list(TARGETS if all_targets else DEFAULT_TARGETS), 8, 16.0, 0)
    # A non-zero B, as after a few steps (zero B would make every adapter's effect nil).
    rng = np.random.default_rng(1)
    return adapter.with_b({n: rng.standard_normal(b.shape, dtype=np.float32) * 1e-3
                           for n, b in adapter.b.items()})


class TwoContexts:
    """Two llama engines (contexts) of one thread each; `score_each` splits the adapters
    between them and decodes from two threads (ctypes drops the GIL in llama_decode)."""

    def __init__(self, model: Path) -> None:
        from prge_gguf.engine.llama import LlamaEngine

        self.engines = [LlamaEngine(model, threads=1) for _ in range(2)]
        n_ctx = _train_context(self.engines[0])
        for engine in self.engines:
            engine.set_context(n_ctx)
        self.header = self.engines[0].header
        self.pool = ThreadPoolExecutor(2)

    def score_each(self, requests, adapters):
        halves = [list(adapters[0::2]), list(adapters[1::2])]
        parts = list(self.pool.map(lambda e, a: e.score_each(requests, a), self.engines, halves))
        out = [None] * len(adapters)
        out[0::2], out[1::2] = parts[0], parts[1]
        return out


def _prge_step_time(engine, adapter, batch, q: int, step: int) -> tuple[float, object]:
    from prge_gguf.prge import prge_step
    from prge_gguf.train import TrainConfig, pair_loss_fn

    cfg = TrainConfig(q=q)
    t0 = time.perf_counter()
    new_b, _, _ = prge_step(adapter.b, pair_loss_fn(engine, adapter, batch, cfg), seed=0, step=step,
                            q=q, eps=cfg.eps, lr=cfg.lr)
    return time.perf_counter() - t0, adapter.with_b(new_b)


def child(variant: str, model: Path, q: int, steps: int, threads: int) -> dict:
    """One variant in this process: per-step medians, tokens per step, peak RSS."""
    rows: list[dict] = []
    all_targets = variant.endswith("-all7")
    if variant.startswith("llama") and variant != "llama-2ctx":
        from prge_gguf.engine.llama import LlamaEngine

        engine = LlamaEngine(model, threads=threads)
        engine.set_context(_train_context(engine))
        batches, adapter = _batches(engine, steps + 1), _adapter(engine, all_targets)
        for step, batch in enumerate(batches):
            requests = [r for ex in batch for r in ex.requests]
            engine.timings.clear()
            for _ in range(2 * q):
                engine.score(requests, [])
            limit = engine.timings["decode"]
            engine.timings.clear()
            dt, adapter = _prge_step_time(engine, adapter, batch, q, step)
            rows.append({"limit_s": limit, "step_s": dt, **{f"{k}_s": v for k, v in engine.timings.items()}})
    elif variant == "llama-2ctx":
        engine = TwoContexts(model)
        batches, adapter = _batches(engine.engines[0], steps + 1), _adapter(engine, all_targets)
        for step, batch in enumerate(batches):
            dt, adapter = _prge_step_time(engine, adapter, batch, q, step)
            rows.append({"step_s": dt})
    else:
        from prge_gguf.engine.torch_engine import TorchEngine
        from prge_gguf.prge import descend

        torch_engine = TorchEngine(model, threads=threads)
        batches, adapter = _batches(torch_engine, steps + 1), _adapter(torch_engine, all_targets)
        for step, batch in enumerate(batches):
            if variant.startswith("torch-zo"):
                dt, adapter = _prge_step_time(torch_engine, adapter, batch, q, step)
            else:
                t0 = time.perf_counter()
                _, grads = torch_engine.loss_gradient(batch, adapter, "label")
                adapter = adapter.with_tensors(descend(adapter.trainable(False), grads, 1e-3))
                dt = time.perf_counter() - t0
            rows.append({"step_s": dt})
    timed = rows[1:]  # step 0 warms caches and pages the weights in
    tokens = [sum(ex.n_tokens for ex in batch) for batch in batches[1:]]
    passes = 1 if variant.startswith("torch-fo") else 2 * q
    return {"variant": variant, "model": str(model), "q": q, "threads": threads,
            "tokens_per_step": passes * statistics.mean(tokens),
            **{k: statistics.median(r[k] for r in timed) for k in timed[0]},
            "peak_rss_mib": peak_rss_mib()}



def run_child(variant: str, model: Path, q: int, steps: int, threads: int) -> dict:
    """`child` in a fresh process (peak RSS is per process); its result."""
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--model", str(model), "--q", str(q),
                          "--steps", str(steps), "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _models(work: Path, quick: bool) -> list[tuple[str, Path, str]]:
    """(label, path, kind) of every model benchmarked; derived files are made in `work`."""
    from prge_gguf.models import smollm2_path
    from prge_gguf.synthetic import quantize, write_synthetic

    shipped = smollm2_path()
    models = [("SmolLM2-135M Q4_1 (shipped)", shipped, "real")]
    if quick:
        return models
    for ftype in ("Q8_0", "Q4_0", "F16"):
        models.append((f"SmolLM2-135M {ftype} (re-quantized from Q4_1)",
                       quantize(shipped, work / f"smollm2-135m-{ftype}.gguf", ftype), "requantized"))
    for preset, label in (("smollm2-360m", "360M"), ("tinyllama-1.1b", "1.1B")):
        models.append((f"{label} Q4_1 (synthetic, random weights)",
                       write_synthetic(work / f"{preset}-Q4_1.gguf", preset, "Q4_1"), "synthetic"))
    return models


def _plan(models, threads: int) -> list[tuple[str, str, Path, int]]:
    """(label, variant, model, q) of every process to run each round."""
    plan = []
    for label, path, kind in models:
        plan.append((label, "llama", path, 1))
        if kind == "real":
            # The default step (attn_q, attn_v), the same with all seven projections, and
            # first-order LoRA-FA on all seven (the accuracy baseline's setting).
            variants = [("llama", 4), ("llama-all7", 1), ("llama-2ctx", 1), ("torch-zo", 1),
                        ("torch-zo", 4), ("torch-zo-all7", 1), ("torch-fo-all7", 1)]
            plan += [(label, variant, path, q) for variant, q in variants]
    return plan


def _table(results: list[dict], sizes: dict[str, float]) -> str:
    lines = ["| model | variant | q | step (s) | tokens/s | vs limit | decode / adapter / logits / rest (s) "
             "| peak RSS (MiB) | model file (MiB) |", "|" + " --- |" * 9]
    for r in results:
        tok_s = r["tokens_per_step"] / r["step_s"]
        vs_limit = split = "-"
        if "limit_s" in r:
            vs_limit = f"{r['limit_s'] / r['step_s']:.2f}x"
            rest = r["step_s"] - r["decode_s"] - r["adapter_s"] - r["logits_s"]
            split = f"{r['decode_s']:.2f} / {r['adapter_s']:.3f} / {r['logits_s']:.3f} / {rest:.3f}"
        lines.append(f"| {r['label']} | {r['variant']} | {r['q']} | {r['step_s']:.2f} | {tok_s:.0f} | "
                     f"{vs_limit} | {split} | {r['peak_rss_mib']:.0f} | {sizes[r['label']]:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--q", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=4, help="timed steps per process (after one warm-up)")
    p.add_argument("--repeats", type=int, default=2, help="rounds over all variants (alternating)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="the shipped model only")
    p.add_argument("--out", default="bench/speed")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.q, args.steps, args.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="prge-bench-") as tmp:
        models = _models(Path(tmp), args.quick)
        sizes = {label: path.stat().st_size / 2**20 for label, path, _ in models}
        plan = _plan(models, args.threads)
        runs: dict[int, list[dict]] = {i: [] for i in range(len(plan))}
        for _ in range(args.repeats):
            for i, (label, variant, path, q) in enumerate(plan):
                runs[i].append(run_child(variant, path, q, args.steps, args.threads))
                print(f"{label} {variant} q={q}: {runs[i][-1]['step_s']:.2f} s/step", file=sys.stderr)
    results = []
    for i, (label, variant, _, q) in enumerate(plan):
        reps = runs[i]
        merged = {k: statistics.median(r[k] for r in reps) for k, v in reps[0].items()
                  if isinstance(v, float)}
        results.append({**reps[0], **merged, "label": label, "variant": variant, "q": q,
                        "peak_rss_mib": max(r["peak_rss_mib"] for r in reps)})
    table = _table(results, sizes)
    host = machine()
    notes = (f"\nOne run, {args.repeats} alternating rounds x {args.steps} timed steps, medians; "
             f"{args.threads} threads; SST-2 batches of {BATCH}. Machine: {host['cpu']}, "
             f"{host['cores']} cores. Synthetic models have random weights: speed only.")
    write_outputs(args.out, {"machine": host, "threads": args.threads, "batch": BATCH,
                             "repeats": args.repeats, "steps": args.steps, "model_mib": sizes,
                             "results": results}, table + "\n" + notes)


if __name__ == "__main__":
    main()
