"""Forward-only gradient estimators, chosen by `--estimator NAME`: one module each, one registry.

Each module has SUMMARY (one line for --help) and `estimate(params, oracle, state, *, seed,
step, q, eps) -> Estimate` (see base.py); `prge`, the paper's, is the default.
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
