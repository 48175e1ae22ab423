"""lozo: low-rank perturbations with a lazily refreshed subspace. LOZO (Chen et al., "Enhancing
zeroth-order fine-tuning for language models with low-rank structures", ICLR 2025); SubZero
(Yu et al., 2024) is the same idea with orthonormal factors.

For each B (out x r) the direction is Z = U V' / sqrt(k): U (out x k) drawn for every query and
step, V (r x k) drawn once per INTERVAL steps (from the seed and step // INTERVAL: no state):

    g_i = (L(B + eps Z_i) - L(B - eps Z_i)) / (2 eps)       estimate = (1/q) sum_i g_i Z_i

E over U gives G V V' / k, E over V gives G: unbiased over a span of intervals, with each Z
as large as a Gaussian z entry for entry (E Z_jl^2 = 1, so eps carries over). Within one
interval the steps stay in V's k columns of r, with k/r of P-RGE's directional variance.
"""

from __future__ import annotations

import numpy as np

from prge_gguf.estimators.base import Estimate, Oracle, State, probe, shapes_of
from prge_gguf.prge import Tensors

RANK = 2  # k: LOZO's rank; B has r = 8 columns by default, so a quarter of them a subspace
INTERVAL = 50  # steps V is kept for (LOZO's nu; its paper's range is 50-100)


def subspace(shapes: dict[str, tuple[int, ...]], seed: int, step: int, rank: int = RANK,
             interval: int = INTERVAL) -> dict[str, np.ndarray]:
    """V (columns x rank) of each tensor for the interval that holds `step`."""
    # Four words, the last 1: no (seed, step, query) key of a direction can draw the same stream.
    rng = np.random.default_rng([seed, 0x1020, step // interval, 1])
    return {n: rng.standard_normal((shapes[n][1], rank), dtype=np.float32) for n in sorted(shapes)}


def low_rank_direction(subspaces: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], seed: int,
                       step: int, query: int) -> dict[str, np.ndarray]:
    """Z = U V' / sqrt(rank) for (seed, step, query), tensors in sorted order (as P-RGE's z)."""
    rng = np.random.default_rng([seed, step, query])
    out = {}
    for n in sorted(shapes):
        v = subspaces[n]
        u = rng.standard_normal((shapes[n][0], v.shape[1]), dtype=np.float32)
        out[n] = (u @ v.T) / np.float32(np.sqrt(v.shape[1]))
    return out


def refusal(rank: int) -> str | None:
    """Why a LoRA rank cannot take this estimator, or None."""
    if rank <= RANK:
        return (f"--estimator lozo perturbs each B (out x r) with rank-{RANK} matrices, which is "
                f"low-rank only for r > {RANK}: use --rank {RANK + 1} or more, or another --estimator")
    return None


def estimate(params: Tensors, oracle: Oracle, state: State, *, seed: int, step: int, q: int,
             eps: float, rank: int = RANK, interval: int = INTERVAL) -> Estimate:
    """The low-rank estimate at `params`; keeps no state (V derives from the step)."""
    shapes = shapes_of(params)
    v = subspace(shapes, seed, step, rank, interval)
    gradient, loss_plus, loss_minus = probe(
        oracle, shapes, lambda i: low_rank_direction(v, shapes, seed, step, i), q, eps)
    return Estimate(gradient, loss_plus, loss_minus, 2 * q, {})
