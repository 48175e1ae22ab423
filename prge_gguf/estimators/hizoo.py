"""hizoo: P-RGE preconditioned by a diagonal curvature estimate. HiZOO (Zhao et al., "Second-order
fine-tuning without pain for LLMs: a Hessian informed zeroth-order optimizer", ICLR 2025).

The state h (one value per entry of B, mean 1) tracks diag(H) up to a scale. With
s = clip(h)^(-1/2) and u_i = s * z_i, z_i ~ N(0, I):

    g_i = (L(B + eps u_i) - L(B - eps u_i)) / (2 eps)              estimate = (1/q) sum_i g_i u_i
    c_i = |L(B + eps u_i) + L(B - eps u_i) - 2 L(B)| / (2 eps^2)    (~ u_i' H u_i / 2)
    h  <- normalise((1 - a) h + a h (1/q) sum_i c_i z_i^2)

E[estimate] = s^2 * gradient: a diagonal Newton-like step once h has settled; while h is
uniform (its start) the step is P-RGE's, so P-RGE's lr carries over. The h update's fixed point
is h proportional to diag(H): E[c z_k^2] h_k = h_k T / 2 + H_k, with T = sum_j H_j / h_j.

Limit: one second difference a step informs one number. Each of the d entries of h is pulled
toward H at ~2a/d a step and pushed by noise at ~a, so at d ~ 1e5 (B on attn_q, attn_v) h
mostly drifts: expect P-RGE plus one forward a step unless the curvature is very uneven.
"""

from __future__ import annotations

import numpy as np

from prge_gguf.estimators.base import Estimate, Oracle, State, probe, shapes_of, weighted_sum
from prge_gguf.prge import Tensors, direction

SUMMARY = "HiZOO: P-RGE scaled by a diagonal curvature estimate (needs L(B)); 2q+1 forwards, keeps h"
# HiZOO's EMA weight. Small, because each step's evidence about one entry of h is mostly noise
# (above): at 1e-3 the noise moves log h by ~0.05 over 1,000 steps.
SMOOTHING = 1e-3
# s = h^(-1/2) with h clipped to [1/CLIP, CLIP]: an entry whose curvature estimate collapses to 0
# would otherwise take an unbounded step.
CLIP = 100.0


def estimate(params: Tensors, oracle: Oracle, state: State, *, seed: int, step: int, q: int,
             eps: float, smoothing: float = SMOOTHING) -> Estimate:
    """The curvature-scaled estimate at `params`; state `hizoo/h/<tensor>`."""
    shapes = shapes_of(params)
    h = {n: state.get(f"hizoo/h/{n}", np.ones(s, np.float32)) for n, s in shapes.items()}
    scale = {n: np.clip(v, 1 / CLIP, CLIP) ** np.float32(-0.5) for n, v in h.items()}

    def z(i: int) -> dict[str, np.ndarray]:
        return direction(shapes, seed, step, i)

    def u(i: int) -> dict[str, np.ndarray]:
        return {n: scale[n] * t for n, t in z(i).items()}

    gradient, loss_plus, loss_minus = probe(oracle, shapes, u, q, eps)
    loss_center = oracle.center()
    curvature = np.abs(loss_plus + loss_minus - 2 * loss_center) / (2 * eps**2)
    evidence = weighted_sum(shapes, curvature / q, ({n: t * t for n, t in z(i).items()} for i in range(q)))
    h = {f"hizoo/h/{n}": np.float32(1 - smoothing) * v + np.float32(smoothing) * v * evidence[n]
         for n, v in h.items()}
    return Estimate(gradient, loss_plus, loss_minus, 2 * q + 1, h)
