"""What does P-RGE's random walk cost, next to what a gradient step can buy?

In expectation a P-RGE step is SGD's, -lr G; what it adds is noise, lr (g z - G) with g the batch's
directional derivative along z ~ N(0, I_d). Summed over N steps that noise is a walk of radius about
R = lr sqrt(N d E[g^2]), E[g^2] = |G|^2 + tr(S)/b (bench_grad_noise's terms), spread over all d
values of B: with d = 184k, many times the length of the drift. This measures, at P-RGE's start
(B = 0, LoRA-FA r 8) or around --adapter's B, on a task's training rows, torch engine: G and tr(S)
by backprop over --n rows; then the loss and accuracy of --n other rows at the start plus R u (u a
random unit direction, --directions of them) for each (lr, steps, batch) of --settings, and along
the gradient, start - t G / |G| for the lengths t of --lengths (what a straight step buys, for scale).

    python scripts/bench/bench_zo_walk.py --task rte --n 128 --settings 2e-2:500:64 2e-2:1000:64 \
        2e-2:2000:64 8e-2:600:64

Writes OUT.json and OUT.md (default bench/zo_walk).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from bench_accuracy import DATA_DIR
from bench_common import machine, made_by, write_outputs
from bench_grad_noise import noise_scale, per_example_gradients, training_sample

from prge_gguf.engine.torch_engine import TorchEngine
from prge_gguf.lora import LoraAdapter, init_lora_fa, read_gguf
from prge_gguf.models import model_path
from prge_gguf.targets import DEFAULT_TARGETS
from prge_gguf.tasks import tokenize
from prge_gguf.train import evaluate


def as_tensors(adapter: LoraAdapter, flat: np.ndarray) -> dict[str, np.ndarray]:
    """A flat vector over the B tensors (per_example_gradients' order: sorted names) as B tensors."""
    out, i = {}, 0
    for name in sorted(adapter.names):
        shape = adapter.b[name].shape
        out[name] = flat[i:i + int(np.prod(shape))].reshape(shape).astype(np.float32)
        i += out[name].size
    return out


def parse_setting(spec: str) -> tuple[float, int, int]:
    """"lr:steps:batch" -> (lr, steps, batch)."""
    lr, steps, batch = spec.split(":")
    return float(lr), int(steps), int(batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="rte")
    p.add_argument("--model", default=None, help="GGUF path or name (default: the shipped SmolLM2)")
    p.add_argument("--n", type=int, default=128, help="training rows for G, and as many others to score")
    p.add_argument("--settings", nargs="+", default=[(2e-2, 1000, 64), (2e-2, 2000, 64), (8e-2, 600, 64)],
                   type=parse_setting, help="lr:steps:batch of the P-RGE runs to stand for")
    p.add_argument("--directions", type=int, default=3, help="random walk directions a setting")
    p.add_argument("--lengths", nargs="+", type=float, default=[0.25, 0.5, 1.0, 2.0],
                   help="lengths of the steps along -G")
    p.add_argument("--adapter", type=Path, help="measure around this adapter's B (one trained on the task) "
                   "rather than at P-RGE's start")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--work", type=Path, default=Path("/tmp/zo-walk"))
    p.add_argument("--out", default="bench/zo_walk")
    args = p.parse_args()
    if args.directions < 2:
        p.error("--directions: at least 2 (the table gives their spread)")
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with TorchEngine(model_path(args.model), device="cpu") as engine:
        adapter = read_gguf(args.adapter) if args.adapter else \
            init_lora_fa(engine.header, list(DEFAULT_TARGETS), 8, 16.0, seed=0)
        origin = np.concatenate([adapter.b[n].ravel() for n in sorted(adapter.names)]).astype(np.float64)
        sample = training_sample(args.task, args.data_dir, args.work, 2 * args.n)
        rows = [tokenize(engine, ex) for ex in sample]
        fit, scored = rows[:args.n], rows[args.n:]
        grads, _ = per_example_gradients(engine, fit, adapter)
        noise = noise_scale(grads, np.array([ex.label for ex in fit]))
        gradient, d = grads.mean(0), grads.shape[1]

        def score(b: np.ndarray) -> dict[str, float]:
            return evaluate(engine, scored, adapter.with_b(as_tensors(adapter, origin + b)), "label")

        start = score(np.zeros(d))
        along = [{"length": t, **score(-t * gradient / np.linalg.norm(gradient))} for t in args.lengths]
        rng = np.random.default_rng(0)
        walks = []
        for lr, steps, batch in args.settings:
            radius = lr * np.sqrt(steps * d * (noise["grad_sq"] + noise["trace_cov"] / batch))
            units = rng.standard_normal((args.directions, d))
            points = [score(radius * u / np.linalg.norm(u)) for u in units]
            walks.append({"lr": lr, "steps": steps, "batch": batch, "radius": float(radius),
                          "points": points})
    seconds = time.perf_counter() - t0

    lines = ["| B | length | loss (mean ± sd) | accuracy |", "| --- | --- | --- | --- |",
             f"| {'the adapter' if args.adapter else '0'} (start) | 0 | {start['loss']:.3f} | "
             f"{start['accuracy']:.3f} |"]
    lines += [f"| start - t G/\\|G\\| | {a['length']:g} | {a['loss']:.3f} | {a['accuracy']:.3f} |"
              for a in along]
    for w in walks:
        loss, acc = (np.array([pt[k] for pt in w["points"]]) for k in ("loss", "accuracy"))
        lines.append(f"| start + walk of lr {w['lr']:g}, {w['steps']} steps, batch {w['batch']} | "
                     f"{w['radius']:.1f} | {loss.mean():.3f} ± {loss.std(ddof=1):.3f} | "
                     f"{acc.mean():.3f} ± {acc.std(ddof=1):.3f} |")
    m = machine()
    where = f"Around {args.adapter}" if args.adapter else "At P-RGE's start (B = 0)"
    lines.append(f"\n{where}: {args.task}, {args.n} training rows for G and tr(S) "
                 f"(|G|^2 {noise['grad_sq']:.3g}, tr(S) {noise['trace_cov']:.3g}), {args.n} other "
                 f"training rows scored; d = {d};"
                 f" each walk in {args.directions} random directions. Torch engine on CPU, {seconds:.0f} s. "
                 + made_by(m))
    write_outputs(args.out, {"machine": m, "model": str(model_path(args.model)), "task": args.task,
                             "n": args.n, "noise": noise, "start": start, "along": along, "walks": walks},
                  "\n".join(lines))


if __name__ == "__main__":
    main()
