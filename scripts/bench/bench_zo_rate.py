"""How much does one zeroth-order step buy, next to one first-order step, and where?

P-RGE's step along z ~ N(0, I_d) is -lr (z . g) z. To second order its expected loss change is
-lr |G|^2 + lr^2/2 (E|g|^2 tr(H) + 2 E g'Hg), so at the best lr (and, for the moment, a noiseless
gradient) a step gains |G|^2 / (2 tr H) nats, against |G|^2 / (2 lambda_G) for a first-order step,
lambda_G = G'HG / |G|^2 the curvature along the gradient. Their ratio tr(H) / lambda_G is the
number of dimensions a zeroth-order step pays for (MeZO's "effective rank"). Perturbing only a set
of B tensors S gains |G_S|^2 / (2 tr H_S): the blocks with the most gradient per unit of curvature
are where perturbations pay.

This measures it at P-RGE's start (B = 0, LoRA-FA r 8; or at --adapter) on each task's training
rows, with the torch engine: G by backprop over --n examples, tr(H) of every B tensor by
Hutchinson's estimator (z . Hz, Hz from central differences of gradients at B +- h z; --probes
samples), G'HG likewise along G:

    python scripts/bench/bench_zo_rate.py --tasks sst2 rte --n 32 --probes 8

Writes OUT.json and OUT.md (default bench/zo_rate).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from bench_accuracy import DATA_DIR
from bench_common import machine, made_by, write_outputs
from bench_grad_noise import training_sample

from prge_gguf.engine.torch_engine import TorchEngine
from prge_gguf.lora import LoraAdapter, init_lora_fa, read_gguf
from prge_gguf.models import model_path
from prge_gguf.targets import DEFAULT_TARGETS, TARGET_NAME, TARGETS
from prge_gguf.tasks import tokenize

H = 1e-2  # the difference step for Hz: P-RGE's own eps is 5e-2


def gradient(engine: TorchEngine, batch: list, adapter: LoraAdapter, b: dict[str, np.ndarray]) -> dict:
    """Mean label-loss gradient of every B (float64, by weight name) with the adapter's B set to `b`."""
    _, grads = engine.loss_gradient(batch, adapter.with_b(b), "label")
    return {n: grads[f"{n}.lora_b"].astype(np.float64) for n in adapter.names}


def hessian_along(engine: TorchEngine, batch: list, adapter: LoraAdapter, v: dict[str, np.ndarray]) -> dict:
    """Hv at the adapter's B, by central differences of gradients at B +- H v."""
    b = adapter.b
    plus = gradient(engine, batch, adapter, {n: (b[n] + H * v[n]).astype(np.float32) for n in v})
    minus = gradient(engine, batch, adapter, {n: (b[n] - H * v[n]).astype(np.float32) for n in v})
    return {n: (plus[n] - minus[n]) / (2 * H) for n in v}


def block_stats(engine: TorchEngine, batch: list, adapter: LoraAdapter, probes: int) -> dict:
    """At the adapter's B, per B tensor: |G|^2 and Hutchinson's tr(H) samples; and G'HG."""
    g = gradient(engine, batch, adapter, dict(adapter.b))
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(probes):
        z = {n: rng.standard_normal(adapter.b[n].shape) for n in adapter.names}
        hz = hessian_along(engine, batch, adapter, z)
        samples.append({n: float((z[n] * hz[n]).sum()) for n in adapter.names})
    hg = hessian_along(engine, batch, adapter, g)
    trace = {n: np.array([s[n] for s in samples]) for n in adapter.names}
    return {"grad_sq": {n: float((g[n] ** 2).sum()) for n in adapter.names},
            "trace": {n: float(t.mean()) for n, t in trace.items()},
            "trace_samples": {n: t.tolist() for n, t in trace.items()},
            "gHg": float(sum((g[n] * hg[n]).sum() for n in adapter.names))}


def rates(stats: dict, names: list[str]) -> dict[str, float]:
    """For the B tensors `names`: |G|^2, tr(H) and its standard error, and the zeroth-order gain per
    step at the best lr (|G|^2 / 2 tr H; NaN where the curvature measured is not positive)."""
    grad_sq = sum(stats["grad_sq"][n] for n in names)
    per_probe = np.sum([stats["trace_samples"][n] for n in names], axis=0)
    trace = float(per_probe.mean())
    se = float(per_probe.std(ddof=1) / np.sqrt(len(per_probe)))
    return {"grad_sq": grad_sq, "trace": trace, "trace_se": se,
            "zo_gain": grad_sq / (2 * trace) if trace > 0 else float("nan")}


def groups(names: list[str]) -> dict[str, list[str]]:
    """All tensors, each projection, and each third of the layers."""
    parsed = {n: TARGET_NAME.match(n) for n in names}
    layers = sorted({int(m.group(1)) for m in parsed.values()})
    thirds = np.array_split(np.array(layers), 3)
    out = {"all": names}
    projections = sorted({m.group(2) for m in parsed.values()})
    out |= {t: [n for n in names if parsed[n].group(2) == t] for t in projections}
    out |= {f"layers {th[0]}-{th[-1]}": [n for n in names if int(parsed[n].group(1)) in set(th.tolist())]
            for th in thirds}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["sst2", "rte", "cb", "wic"])
    p.add_argument("--model", default=None, help="GGUF path or name (default: the shipped SmolLM2)")
    p.add_argument("--n", type=int, default=32, help="training examples per task (one batch)")
    p.add_argument("--probes", type=int, default=8, help="Hutchinson samples")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="projections, or 'all' (seven)")
    p.add_argument("--adapter", type=Path, help="measure at this adapter's A and B (one trained on the "
                   "task; its targets, not --targets) rather than at P-RGE's start")
    p.add_argument("--work", type=Path, default=Path("/tmp/zo-rate"))
    p.add_argument("--out", default="bench/zo_rate")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    targets = list(TARGETS) if args.targets == "all" else args.targets.split(",")
    rows = []
    lines = ["| task | B of | \\|G\\|^2 | tr(H) (± se) | zero-order gain a step (nats) | "
             "first-order gain a step | dimensions paid (tr H / lambda_G) | seconds |", "|" + " --- |" * 8]
    with TorchEngine(model_path(args.model), device="cpu") as engine:
        adapter = read_gguf(args.adapter) if args.adapter else \
            init_lora_fa(engine.header, targets, 8, 16.0, seed=0)
        for task in args.tasks:
            batch = [tokenize(engine, ex) for ex in training_sample(task, args.data_dir, args.work, args.n)]
            t0 = time.perf_counter()
            stats = block_stats(engine, batch, adapter, args.probes)
            seconds = time.perf_counter() - t0
            for group, names in groups(adapter.names).items():
                r = {"task": task, "group": group, "n": len(batch), "probes": args.probes,
                     **rates(stats, names), "seconds": seconds}
                fo = ""
                if group == "all":
                    lam = stats["gHg"] / r["grad_sq"]
                    r |= {"gHg": stats["gHg"],
                          "fo_gain": r["grad_sq"] / (2 * lam) if lam > 0 else float("nan"),
                          "dims_paid": r["trace"] / lam if lam > 0 else float("nan")}
                    fo = f"{r['fo_gain']:.3g} | {r['dims_paid']:.3g}"
                rows.append(r)
                lines.append(f"| {task} | {group} | {r['grad_sq']:.3g} | {r['trace']:.3g} ± "
                             f"{r['trace_se']:.2g} | {r['zo_gain']:.3g} | {fo or ' | '} | {seconds:.0f} |")
            rows.append({"task": task, "blocks": stats})
    m = machine()
    where = f"at {args.adapter}" if args.adapter else "at P-RGE's start (LoRA-FA r 8 alpha 16, B = 0)"
    lines.append(f"\nMeasured {where}, label-word loss, one batch of {args.n} "
                 f"training rows a task, {args.probes} Hutchinson probes, torch engine on CPU. Gains are "
                 "at the best lr and without minibatch noise (which divides the zeroth-order gain by "
                 f"1 + B_noise / batch, bench/grad_noise.md). {made_by(m)}")
    result = {"machine": m, "model": str(model_path(args.model)), "rows": rows}
    write_outputs(args.out, result, "\n".join(lines))


if __name__ == "__main__":
    main()
