"""prge: the paper's estimate, (1/q) sum_i g_i z_i with z_i ~ N(0, I) (prge_gguf.prge), unchanged."""

from __future__ import annotations

from prge_gguf.estimators.base import Estimate, Oracle, State
from prge_gguf.prge import Tensors, estimate_step


def estimate(params: Tensors, oracle: Oracle, state: State, *, seed: int, step: int, q: int,
             eps: float) -> Estimate:
    """The P-RGE estimate; keeps no state."""
    gradient, loss_plus, loss_minus = estimate_step(params, oracle.pairs, seed=seed, step=step, q=q, eps=eps)
    return Estimate(gradient, loss_plus, loss_minus, 2 * q, {})
