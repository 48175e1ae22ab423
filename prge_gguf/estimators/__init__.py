"""Forward-only gradient estimators, chosen by `--estimator NAME`: one module each, one registry.

Each module has `estimate(params, oracle, state, *, seed, step, q, eps) -> Estimate` (see
base.py); ESTIMATORS names them with one line each for --help, and loads a module only when its
estimate is first called (the command line's --help stays free of numpy). `prge`, the paper's,
is the default.

Left out, and why (B on attn_q + attn_v is d ~ 1.8e5 values, q <= 16): ZO-Align (Lin et al.,
"The multi-query paradox in zeroth-order optimization", 2025) estimates Z (Z'Z)^(-1) y, which
at q << d is P-RGE's average times d/q: an lr, not a new direction. BSZO (Feng & Huang, 2026)
Kalman-filters q axis-aligned directional derivatives under a Gaussian prior, which shrinks
each by one factor: again an lr, plus its noise estimate. MeZO-SVRG (Gautam et al., 2024)
needs the step's batch scored at an anchor too and a large-batch estimate every few steps:
twice the forwards and a second batch in the oracle. P-GAP (Mi et al., 2025) fixes each
direction's component along a gradient estimate, inside a low-rank subspace of it: ConMeZO's
cone and LOZO's subspace together, with extra probes a refresh to estimate that gradient.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prge_gguf.estimators.base import Estimate

EstimateFn = Callable[..., "Estimate"]


def _estimate(name: str) -> EstimateFn:
    """`estimate` of the module `name`, imported at the first call."""

    def call(*args: object, **kwargs: object) -> Estimate:
        return importlib.import_module(f"{__name__}.{name}").estimate(*args, **kwargs)

    return call


ESTIMATORS: dict[str, tuple[str, EstimateFn]] = {
    "prge": ("P-RGE (the paper's): mean of g_i z_i over q Gaussian directions; 2q forwards, no state",
             _estimate("prge")),
    "hizoo": ("HiZOO: P-RGE scaled by a diagonal curvature estimate (needs L(B)); 2q+1 forwards, keeps h",
              _estimate("hizoo")),
    "lozo": ("LOZO: rank-2 perturbations U V' of each B, V redrawn every 50 steps; 2q forwards, no state",
             _estimate("lozo")),
    "conmezo": ("ConMeZO: directions in a cone around the momentum of past estimates; 2q forwards, keeps m",
                _estimate("conmezo")),
}


def refusal(name: str, rank: int) -> str | None:
    """Why estimator `name` cannot train a LoRA of rank `rank`, or None (unknown names: None)."""
    if name != "lozo":
        return None
    from prge_gguf.estimators import lozo

    return lozo.refusal(rank)


def own_state(name: str, state: dict) -> tuple[dict, dict]:
    """`state` split into (estimator `name`'s part, the rest: the optimizer's)."""
    mine = {k: v for k, v in state.items() if k.startswith(f"{name}/")}
    return mine, {k: v for k, v in state.items() if k not in mine}


__all__ = ["ESTIMATORS", "own_state", "refusal"]
