"""P-RGE: the zeroth-order gradient estimate and update over LoRA B tensors. Pure numpy.

For queries i = 1..q with directions z_i ~ N(0, I) (regenerated from
(seed, step, i), never stored):

    g_i = (L(B + eps z_i) - L(B - eps z_i)) / (2 eps)
    B  <- B - lr * ((1/q) sum_i g_i z_i + weight_decay * B)

`g_i` is the directional derivative of the loss along z_i, so E[g_i z_i] is the
gradient (to O(eps^2)); q > 1 averages independent estimates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from prge_gguf.threads import thread_map

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
    shapes: Mapping[str, tuple[int, ...]], seed: int, step: int, q: int
) -> list[dict[str, np.ndarray]]:
    """z_0..z_{q-1} of `step`, drawn on threads at once: with the perturbations scored in
    parallel, drawing them one after another would grow a step's time with q. Each z has its
    own generator, so the values are `direction`'s."""
    return thread_map(lambda i: direction(shapes, seed, step, i), range(q))


def projected_gradients(loss_plus: np.ndarray, loss_minus: np.ndarray, eps: float) -> np.ndarray:
    """Central differences g_i = (L+_i - L-_i) / (2 eps), one per query."""
    return (np.asarray(loss_plus, np.float64) - np.asarray(loss_minus, np.float64)) / (2 * eps)


def gradient_estimate(
    shapes: Mapping[str, tuple[int, ...]], grads: np.ndarray, seed: int, step: int
) -> dict[str, np.ndarray]:
    """mean_i g_i z_i, with the z_i regenerated."""
    return _weighted_mean(shapes, directions(shapes, seed, step, len(grads)), grads)


def _weighted_mean(shapes: Mapping[str, tuple[int, ...]], zs: Sequence[Tensors], grads: np.ndarray
                   ) -> dict[str, np.ndarray]:
    """mean_i g_i z_i, summed in query order."""
    total = {n: np.zeros(s, dtype=np.float32) for n, s in shapes.items()}
    for z, g in zip(zs, grads, strict=True):
        for n in total:
            total[n] += np.float32(g / len(grads)) * z[n]
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
    # The z are kept for the estimate, not drawn again: a step holds q of them and, while the
    # engine scores, their q scaled copies (as many B-sized arrays as perturbed adapters).
    zs = directions(shapes, seed, step, q)
    scaled = thread_map(lambda z: {n: np.float32(eps) * arr for n, arr in z.items()}, zs)
    loss_plus, loss_minus = pair_loss(scaled)
    del scaled
    grads = projected_gradients(loss_plus, loss_minus, eps)
    return _weighted_mean(shapes, zs, grads), loss_plus, loss_minus


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
