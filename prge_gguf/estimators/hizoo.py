"""hizoo: P-RGE preconditioned by a diagonal curvature estimate. HiZOO (Zhao et al., "Second-order
fine-tuning without pain for LLMs: a Hessian informed zeroth-order optimizer", ICLR 2025).

The state h (one value per entry of B, starting at 1) tracks diag(H). With s = h^(-1/2) and
z_i ~ N(0, I), HiZOO's step and curvature along u_i = s z_i are

    g_i = (L(B + eps u_i) - L(B - eps u_i)) / (2 eps)              estimate = (1/q) sum_i g_i u_i
    c_i = |L(B + eps u_i) + L(B - eps u_i) - 2 L(B)| / (2 eps^2)    (~ u_i' H u_i / 2)
    h  <- (1 - a) h + a h (1/q) sum_i c_i z_i^2

so E[estimate] = h^(-1) gradient, a damped diagonal Newton step. The update's fixed point is
h = (d + 2)/2 diag(H) (E[c z_k^2] h_k = h_k T/2 + H_k, T = sum_j H_j / h_j), where c ~ 1: h also
sets the step's overall size, and --lr means a fraction of that step, not P-RGE's lr. While h
is 1 (its start) the step is P-RGE's; on SmolLM2 and SST-2 the first c were 6-26, so h moves
toward ~10-25 over ~1/a = 1,000 steps and the steps shrink as much: raise --lr for hizoo
(untuned). Unlike HiZOO, the losses are taken along u_i / rms(u_i), of P-RGE's
size (eps stays above llama.cpp's noise in the loss), and rescaled to HiZOO's g_i and c_i.

Limit: one second difference a step informs one number. Each entry of h is pulled toward H at
~2a/d a step and pushed by noise at ~a, so at d ~ 1e5 (B on attn_q, attn_v) the diagonal mostly
drifts and only h's overall scale is learnt; at small d it pays (tests/test_estimators.py).
"""

from __future__ import annotations

import numpy as np

from prge_gguf.estimators.base import Estimate, Oracle, State, probe, shapes_of, size_of, weighted_sum
from prge_gguf.prge import Tensors, direction

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
    # Losses along s z / sqrt(mean_square) (the docstring): HiZOO's u is sqrt(mean_square) times ours.
    mean_square = sum(float(np.square(v, dtype=np.float64).sum()) for v in scale.values()) / size_of(shapes)
    scale = {n: v / np.float32(np.sqrt(mean_square)) for n, v in scale.items()}

    def z(i: int) -> dict[str, np.ndarray]:
        return direction(shapes, seed, step, i)

    def u(i: int) -> dict[str, np.ndarray]:
        return {n: scale[n] * t for n, t in z(i).items()}

    gradient, loss_plus, loss_minus = probe(oracle, shapes, u, q, eps)
    gradient = {n: np.float32(mean_square) * g for n, g in gradient.items()}
    loss_center = oracle.center()
    curvature = mean_square * np.abs(loss_plus + loss_minus - 2 * loss_center) / (2 * eps**2)
    evidence = weighted_sum(shapes, curvature / q, ({n: t * t for n, t in z(i).items()} for i in range(q)))
    h = {f"hizoo/h/{n}": np.float32(1 - smoothing) * v + np.float32(smoothing) * v * evidence[n]
         for n, v in h.items()}
    return Estimate(gradient, loss_plus, loss_minus, 2 * q + 1, h)
