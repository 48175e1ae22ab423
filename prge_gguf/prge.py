"""P-RGE: the zeroth-order gradient estimate and update over LoRA B tensors. Pure numpy.

For queries i = 1..q with directions z_i ~ N(0, I) (regenerated from
(seed, step, i), never stored):

    g_i = (L(B + eps z_i) - L(B - eps z_i)) / (2 eps)
    B  <- B - lr * ((1/q) sum_i g_i z_i + weight_decay * B)

`g_i` is the directional derivative of the loss along z_i, so E[g_i z_i] is the
gradient (to O(eps^2)); q > 1 averages independent estimates.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

Tensors = Mapping[str, np.ndarray]
# Losses at B + eps*z_i and B - eps*z_i for each direction in the list, in order.
PairLoss = Callable[[Sequence[Tensors]], tuple[np.ndarray, np.ndarray]]


def direction(
    shapes: Mapping[str, tuple[int, ...]], seed: int, step: int, query: int
) -> dict[str, np.ndarray]:
    """z for (seed, step, query): the same on every machine (sorted tensor order, PCG64)."""
    rng = np.random.default_rng([seed, step, query])
    return {n: rng.standard_normal(shapes[n], dtype=np.float32) for n in sorted(shapes)}


def directions(
    shapes: Mapping[str, tuple[int, ...]], seed: int, step: int, scales: Sequence[float]
) -> list[dict[str, np.ndarray]]:
    """scales[i] * z_i (float32) for queries i = 0..len(scales)-1, the queries on threads at once
    (numpy's generators release the GIL while they fill): with the perturbations scored in
    parallel, drawing z one query after another would grow a step's time with q. Each z has its
    own generator, so the values are `direction`'s."""

    def scaled(i: int) -> dict[str, np.ndarray]:
        z = direction(shapes, seed, step, i)
        for arr in z.values():
            arr *= np.float32(scales[i])
        return z

    if len(scales) == 1:
        return [scaled(0)]
    with ThreadPoolExecutor(min(len(scales), os.cpu_count() or 1), thread_name_prefix="prge-z") as pool:
        return list(pool.map(scaled, range(len(scales))))


def projected_gradients(loss_plus: np.ndarray, loss_minus: np.ndarray, eps: float) -> np.ndarray:
    """Central differences g_i = (L+_i - L-_i) / (2 eps), one per query."""
    return (np.asarray(loss_plus, np.float64) - np.asarray(loss_minus, np.float64)) / (2 * eps)


def gradient_estimate(
    shapes: Mapping[str, tuple[int, ...]], grads: np.ndarray, seed: int, step: int
) -> dict[str, np.ndarray]:
    """mean_i g_i z_i, with the z_i regenerated (all q at once, as the step's perturbations were
    held) and summed in query order."""
    total = {n: np.zeros(s, dtype=np.float32) for n, s in shapes.items()}
    for z in directions(shapes, seed, step, [g / len(grads) for g in grads]):
        for n in total:
            total[n] += z[n]
    return total


def descend(
    params: Tensors, gradient: Tensors, lr: float, weight_decay: float = 0.0
) -> dict[str, np.ndarray]:
    """B - lr * (gradient + weight_decay * B), in float32: the step of P-RGE and of the
    first-order baseline alike."""
    return {
        n: (p - np.float32(lr) * (gradient[n] + np.float32(weight_decay) * p)).astype(np.float32)
        for n, p in params.items()
    }


def estimate_step(
    params: Tensors, pair_loss: PairLoss, *, seed: int, step: int, q: int, eps: float
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The P-RGE gradient estimate at `params`: (mean_i g_i z_i, losses at +eps, at -eps).

    `pair_loss` gets the q scaled directions eps*z_i and evaluates all 2q
    perturbed losses (the engine decides how to batch them).
    """
    shapes = {n: p.shape for n, p in params.items()}
    scaled = directions(shapes, seed, step, [eps] * q)
    loss_plus, loss_minus = pair_loss(scaled)
    del scaled  # the estimate regenerates the z: never two sets held at once
    grads = projected_gradients(loss_plus, loss_minus, eps)
    return gradient_estimate(shapes, grads, seed, step), loss_plus, loss_minus


def prge_step(
    params: Tensors,
    pair_loss: PairLoss,
    *,
    seed: int,
    step: int,
    q: int,
    eps: float,
    lr: float,
    weight_decay: float = 0.0,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """One P-RGE step with plain SGD. Returns (new params, losses at +eps, losses at -eps)."""
    estimate, loss_plus, loss_minus = estimate_step(params, pair_loss, seed=seed, step=step, q=q, eps=eps)
    return descend(params, estimate, lr, weight_decay), loss_plus, loss_minus
