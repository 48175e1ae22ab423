"""Forward-only gradient estimators, chosen by `--estimator NAME`: one module each, one registry.

Each module has SUMMARY (one line for --help) and `estimate(params, oracle, state, *, seed,
step, q, eps) -> Estimate` (see base.py); `prge`, the paper's, is the default.

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

from collections.abc import Callable

from prge_gguf.estimators import conmezo, hizoo, lozo, prge
from prge_gguf.estimators.base import Estimate, Oracle, State

EstimateFn = Callable[..., Estimate]

ESTIMATORS: dict[str, tuple[str, EstimateFn]] = {
    "prge": (prge.SUMMARY, prge.estimate),
    "hizoo": (hizoo.SUMMARY, hizoo.estimate),
    "lozo": (lozo.SUMMARY, lozo.estimate),
    "conmezo": (conmezo.SUMMARY, conmezo.estimate),
}


def refusal(name: str, rank: int) -> str | None:
    """Why estimator `name` cannot train a LoRA of rank `rank`, or None (unknown names: None)."""
    return lozo.refusal(rank) if name == "lozo" else None


def own_state(name: str, state: State) -> tuple[State, State]:
    """`state` split into (estimator `name`'s part, the rest: the optimizer's)."""
    mine = {k: v for k, v in state.items() if k.startswith(f"{name}/")}
    return mine, {k: v for k, v in state.items() if k not in mine}


__all__ = ["ESTIMATORS", "Estimate", "Oracle", "State", "own_state", "refusal"]
