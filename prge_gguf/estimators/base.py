"""What every gradient estimator gets and returns, and the tensor arithmetic they share. Pure numpy.

An estimator turns a step's loss evaluations into a gradient estimate for the optimizer
(`--optimizer zo`, `zo-momentum`, `zo-adam`). It is a pure function of (params, the
losses it asks for, its state, seed, step): the same inputs give the same estimate on
every machine, and a checkpoint that saves the state resumes bit-identically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from prge_gguf.prge import PairLoss, Tensors, projected_gradients

# An estimator's state: flat, as checkpoints save it; every key starts with "<estimator>/".
State = dict[str, np.ndarray]


@dataclass(frozen=True)
class Oracle:
    """The losses an estimator may ask for on the step's batch."""

    pairs: PairLoss  # for offsets d_i: (losses at B + d_i, at B - d_i), 2 evaluations each
    center: Callable[[], float]  # the loss at B itself: one more evaluation


@dataclass(frozen=True)
class Estimate:
    """An estimator's answer: the gradient estimate, the losses it saw, its new state."""

    gradient: dict[str, np.ndarray]
    loss_plus: np.ndarray  # losses at B + eps z_i (the step's logged loss averages these and the next)
    loss_minus: np.ndarray
    evaluations: int  # adapters the batch was scored under (forward passes, for token counts)
    state: State


def shapes_of(params: Tensors) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, by name."""
    return {n: p.shape for n, p in params.items()}


def scaled(tensors: Tensors, factor: float) -> dict[str, np.ndarray]:
    """factor * tensors, in float32 (how perturbations reach the engine)."""
    return {n: np.float32(factor) * t for n, t in tensors.items()}


def weighted_sum(shapes: Mapping[str, tuple[int, ...]], weights: np.ndarray,
                 tensors: Iterable[Tensors]) -> dict[str, np.ndarray]:
    """sum_i weights[i] * tensors_i in float32; `tensors` may be a generator, so that only one
    direction is held at a time."""
    total = {n: np.zeros(s, np.float32) for n, s in shapes.items()}
    for w, t in zip(weights, tensors, strict=True):
        for n in total:
            total[n] += np.float32(w) * t[n]
    return total


def probe(oracle: Oracle, shapes: Mapping[str, tuple[int, ...]], directions: Callable[[int], Tensors],
          q: int, eps: float) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Central differences along directions(0), ..., directions(q - 1): ((1/q) sum_i g_i d_i,
    losses at +eps d_i, at -eps d_i). Each direction is made twice rather than held a second time."""
    loss_plus, loss_minus = oracle.pairs([scaled(directions(i), eps) for i in range(q)])
    grads = projected_gradients(loss_plus, loss_minus, eps) / q
    return weighted_sum(shapes, grads, (directions(i) for i in range(q))), loss_plus, loss_minus


def dot(a: Tensors, b: Tensors) -> float:
    """<a, b> over all tensors, in float64."""
    return float(sum(np.vdot(a[n].astype(np.float64), b[n].astype(np.float64)) for n in a))


def size_of(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Number of values over all tensors (the dimension d of the search space)."""
    return int(sum(np.prod(s) for s in shapes.values()))
