"""How noisy is a minibatch's gradient, next to the gradient itself? The answer sets P-RGE's batch size.

P-RGE's estimate along a direction z is g = z . grad L_batch, whose second moment over z and the
batch is |G|^2 + tr(S)/b (G the full-data gradient, S the per-example gradient covariance, b the
batch size). Where the gradient noise scale B_noise = tr(S)/|G|^2 (McCandlish et al., 2018) is well
above b, the batch's noise swamps the signal, and a step's progress grows nearly linearly with b:
on a GPU, where llama.cpp's step time barely grows with the batch, a larger batch is then almost
free accuracy per minute. This measures B_noise at P-RGE's start (B = 0, the default adapter) from
per-example gradients by backprop (torch engine, exact), on each task's training data; with
--by-target also for each projection's B tensors alone (which targets carry signal, not noise):

    python scripts/bench/bench_grad_noise.py --tasks sst2 cb --n 64
    python scripts/bench/bench_grad_noise.py --tasks sst2 rte --targets all --by-target \
        --out bench/grad_noise_targets

"B_noise within labels" is what is left when every batch holds each label's share of the data
(label-stratified batches; bench/sweeps/stratified-gpu.md tried them on P-RGE).

Writes OUT.json and OUT.md (default bench/grad_noise). Unbiased: |G|^2 = |mean g_i|^2 - tr(S)/n.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
from bench_accuracy import DATA_DIR, tuning_split
from bench_common import machine, made_by, write_outputs

from prge_gguf.engine.torch_engine import TorchEngine
from prge_gguf.lora import init_lora_fa
from prge_gguf.models import model_path
from prge_gguf.targets import DEFAULT_TARGETS, TARGET_NAME, TARGETS
from prge_gguf.tasks import builtin_task, tokenize


def per_example_gradients(engine: TorchEngine, examples: list, adapter) -> tuple[np.ndarray, list[str]]:
    """(one flattened float64 B-gradient per example, (n, trainable values); the projection of each
    column)."""
    rows = []
    for ex in examples:
        _, grads = engine.loss_gradient([ex], adapter, "label")
        rows.append(np.concatenate([grads[k].ravel() for k in sorted(grads)]).astype(np.float64))
    # "blk.3.attn_q.weight.lora_b" -> attn_q, once per value of that tensor
    owner = [TARGET_NAME.match(k.removesuffix(".lora_b")).group(2) for k in sorted(grads)]
    columns = [name for k, name in zip(sorted(grads), owner, strict=True) for _ in range(grads[k].size)]
    return np.stack(rows), columns


def training_sample(task: str, data_dir: Path, work: Path, n: int) -> list:
    """`n` examples drawn (seed 0) from the training rows bench_accuracy trains `task` on."""
    flags = tuning_split(task, data_dir, work)
    source = Path(flags[flags.index("--data") + 1]) if "--data" in flags else builtin_task(task).train_file
    examples = builtin_task(task).examples(source)
    return random.Random(0).sample(examples, min(n, len(examples)))


def noise_scale(grads: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """|G|^2 (unbiased), tr(S) and B_noise from float64 per-example gradients (n, d); also tr(S) and
    B_noise within labels (sum of label shares times each label's tr(S)): what is left of the
    noise when every batch holds each label's share of the data."""
    n = len(grads)
    mean = grads.mean(0)
    trace = float(((grads - mean) ** 2).sum(1).sum() / (n - 1))
    signal = float(mean @ mean) - trace / n
    within = sum(float(((g - g.mean(0)) ** 2).sum() / max(len(g) - 1, 1)) * len(g) / n
                 for g in (grads[labels == k] for k in np.unique(labels)))
    return {"grad_sq": signal, "trace_cov": trace, "b_noise": _ratio(trace, signal),
            "trace_within_labels": within, "b_noise_within_labels": _ratio(within, signal)}


def _ratio(trace: float, signal: float) -> float:
    return trace / signal if signal > 0 else float("inf")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["sst2", "rte", "cb", "copa", "wic"])
    p.add_argument("--model", default=None, help="GGUF path or name (default: the shipped SmolLM2)")
    p.add_argument("--n", type=int, default=64, help="training examples per task")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="projections, or 'all' (seven)")
    p.add_argument("--by-target", action="store_true", help="also a row per projection")
    p.add_argument("--work", type=Path, default=Path("/tmp/grad-noise"))
    p.add_argument("--out", default="bench/grad_noise")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    targets = list(TARGETS) if args.targets == "all" else args.targets.split(",")
    rows, lines = [], ["| task | B of | examples | trainable values | \\|G\\|^2 | tr(S) | B_noise "
                       "| B_noise within labels | seconds |", "|" + " --- |" * 9]
    with TorchEngine(model_path(args.model), device="cpu") as engine:
        adapter = init_lora_fa(engine.header, targets, 8, 16.0, seed=0)
        for task in args.tasks:
            sample = training_sample(task, args.data_dir, args.work, args.n)
            t0 = time.perf_counter()
            grads, columns = per_example_gradients(engine, [tokenize(engine, ex) for ex in sample], adapter)
            labels = np.array([ex.label for ex in sample])
            seconds = time.perf_counter() - t0
            groups = {"+".join(targets): np.ones(len(columns), bool)}
            if args.by_target:
                groups |= {t: np.array([c == t for c in columns]) for t in targets}
            for group, mask in groups.items():
                r = {"task": task, "targets": group, "n": len(sample), "d": int(mask.sum()),
                     **noise_scale(grads[:, mask], labels), "seconds": seconds}
                rows.append(r)
                lines.append(f"| {task} | {group} | {r['n']} | {r['d']} | {r['grad_sq']:.3g} | "
                             f"{r['trace_cov']:.3g} | {r['b_noise']:.0f} | "
                             f"{r['b_noise_within_labels']:.0f} | {r['seconds']:.0f} |")
    m = machine()
    lines.append("\nAt P-RGE's start (LoRA-FA r 8, B = 0), label-word loss, exact per-example gradients "
                 f"(torch engine, CPU). {made_by(m)}")
    result = {"machine": m, "model": str(model_path(args.model)), "rows": rows}
    write_outputs(args.out, result, "\n".join(lines))


if __name__ == "__main__":
    main()
