"""conmezo: directions sampled in a cone around the momentum of past estimates. ConMeZO (Behric
et al., "ConMeZO: adaptive descent-direction sampling for gradient-free finetuning of large
language models", 2025).

With m the momentum (an average of past estimates) and m^ = m / |m|, each query's direction is

    z_i = sqrt(d) (cos(theta) m^ + sin(theta) x_i),   x_i a Gaussian direction made unit and orthogonal to m
    g_i = (L(B + eps z_i) - L(B - eps z_i)) / (2 eps)      estimate = (1/q) sum_i g_i z_i
    m  <- beta m + (1 - beta) estimate

|z_i| = sqrt(d), as a Gaussian z's length, so eps and lr carry over; the first step (m = 0) is
P-RGE's. E[estimate] = d cos^2(theta) (m^.grad) m^ + sin^2(theta) d/(d-1) (the rest of grad):
biased toward m, which pays where the gradient turns slowly and m has found it. The paper
steps along m; here the estimate goes to --optimizer (zo-momentum does that).
"""

from __future__ import annotations

import math

import numpy as np

from prge_gguf.estimators.base import Estimate, Oracle, State, dot, probe, shapes_of, size_of
from prge_gguf.prge import Tensors, direction

# Half-angle theta of the cone: cos(1.35) = 0.22, so a fifth of each direction's length is along m.
# Untuned here (the paper tunes it per task).
ANGLE = 1.35
BETA = 0.99  # momentum of the cone's axis, over ~100 steps


def cone_direction(axis: dict[str, np.ndarray] | None, shapes: dict[str, tuple[int, ...]], angle: float,
                   seed: int, step: int, query: int) -> dict[str, np.ndarray]:
    """z for (seed, step, query) in the cone around the unit `axis`; P-RGE's z where axis is None."""
    x = direction(shapes, seed, step, query)
    if axis is None:
        return x
    along = dot(x, axis)
    x = {n: t - np.float32(along) * axis[n] for n, t in x.items()}
    norm = math.sqrt(dot(x, x))
    root_d = math.sqrt(size_of(shapes))
    c, s = np.float32(root_d * math.cos(angle)), np.float32(root_d * math.sin(angle) / norm)
    return {n: c * axis[n] + s * t for n, t in x.items()}


def estimate(params: Tensors, oracle: Oracle, state: State, *, seed: int, step: int, q: int,
             eps: float, angle: float = ANGLE, beta: float = BETA) -> Estimate:
    """The cone-sampled estimate at `params`; state `conmezo/m/<tensor>`."""
    shapes = shapes_of(params)
    m = {n: state.get(f"conmezo/m/{n}", np.zeros(s, np.float32)) for n, s in shapes.items()}
    norm = math.sqrt(dot(m, m))
    axis = {n: t / np.float32(norm) for n, t in m.items()} if norm > 0 else None

    def z(i: int) -> dict[str, np.ndarray]:
        return cone_direction(axis, shapes, angle, seed, step, i)

    gradient, loss_plus, loss_minus = probe(oracle, shapes, z, q, eps)
    m = {f"conmezo/m/{n}": np.float32(beta) * t + np.float32(1 - beta) * gradient[n] for n, t in m.items()}
    return Estimate(gradient, loss_plus, loss_minus, 2 * q, m)
