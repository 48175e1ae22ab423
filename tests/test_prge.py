"""The estimator in pure numpy: unbiasedness on a quadratic, variance in q, seed reproducibility."""

import numpy as np
import pytest

from prge_gguf.prge import descend, direction, gradient_estimate, prge_step, projected_gradients

SHAPES = {"blk.0.attn_q.weight": (4, 3), "blk.0.attn_v.weight": (2, 5)}


def _quadratic(seed=0):
    rng = np.random.default_rng(seed)
    h = {n: rng.uniform(0.5, 2.0, s) for n, s in SHAPES.items()}  # diagonal Hessian
    c = {n: rng.normal(size=s) for n, s in SHAPES.items()}

    def loss(p):
        return sum(float((0.5 * h[n] * p[n] ** 2 + c[n] * p[n]).sum()) for n in p)

    def grad(p):
        return {n: h[n] * p[n] + c[n] for n in p}

    return loss, grad


def _pair_loss(loss, params):
    def pair_loss(scaled):
        plus = [loss({n: params[n] + d[n] for n in params}) for d in scaled]
        minus = [loss({n: params[n] - d[n] for n in params}) for d in scaled]
        return np.array(plus), np.array(minus)

    return pair_loss


def _estimate(params, loss, q, step, seed=7, eps=1e-3):
    """-(B_new - B) at lr = 1 is the P-RGE gradient estimate."""
    new, _, _ = prge_step(params, _pair_loss(loss, params), seed=seed, step=step, q=q, eps=eps, lr=1.0)
    return np.concatenate([(params[n] - new[n]).ravel() for n in sorted(params)])


def test_mean_of_estimates_converges_to_true_gradient():
    loss, grad = _quadratic()
    rng = np.random.default_rng(1)
    params = {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}
    true = np.concatenate([grad(params)[n].ravel() for n in sorted(params)])
    # 4,000 steps x q = 4: 16,000 directions over d = 22 dims; the relative error of the
    # mean is ~sqrt((d+1)/N) ~ 0.04, so 0.1 is a ~2.5-sigma bound (deterministic seeds).
    mean = np.mean([_estimate(params, loss, q=4, step=s) for s in range(4000)], axis=0)
    rel = np.linalg.norm(mean - true) / np.linalg.norm(true)
    assert rel < 0.1, rel
    # A biased estimator (e.g. a dropped 1/(2 eps)) would be off by a factor, not a few percent.
    assert np.dot(mean, true) / np.dot(true, true) == pytest.approx(1.0, abs=0.1)


def test_more_queries_lower_the_variance():
    loss, _ = _quadratic()
    params = {n: np.ones(s, np.float32) for n, s in SHAPES.items()}
    var = {q: np.var([_estimate(params, loss, q=q, step=s) for s in range(600)], axis=0).sum()
           for q in (1, 4)}
    # Independent directions: variance ~ 1/q, so q = 4 gives ~0.25x.
    assert var[4] < 0.45 * var[1], var


def test_same_seed_same_directions_and_update():
    a = direction(SHAPES, seed=3, step=5, query=2)
    b = direction(SHAPES, seed=3, step=5, query=2)
    c = direction(SHAPES, seed=3, step=6, query=2)
    for n in SHAPES:
        assert a[n].dtype == np.float32 and a[n].shape == SHAPES[n]
        np.testing.assert_array_equal(a[n], b[n])
        assert not np.array_equal(a[n], c[n])
    grads = np.array([0.3, -1.2])
    u1 = gradient_estimate(SHAPES, grads, seed=3, step=5)
    u2 = gradient_estimate(SHAPES, grads, seed=3, step=5)
    for n in SHAPES:
        np.testing.assert_array_equal(u1[n], u2[n])


def test_update_formula_and_weight_decay():
    params = {n: np.full(s, 2.0, np.float32) for n, s in SHAPES.items()}
    grads = np.array([0.5, 1.5])
    new = descend(params, gradient_estimate(SHAPES, grads, seed=1, step=0), lr=0.1, weight_decay=0.01)
    z0, z1 = (direction(SHAPES, 1, 0, i) for i in range(2))
    for n in SHAPES:
        expected = params[n] - 0.1 * ((0.5 * z0[n] + 1.5 * z1[n]) / 2 + 0.01 * params[n])
        np.testing.assert_allclose(new[n], expected, rtol=1e-6, atol=1e-6)


def test_projected_gradient_is_central_difference():
    g = projected_gradients(np.array([1.0, 2.0]), np.array([0.5, 3.0]), eps=0.25)
    np.testing.assert_allclose(g, [1.0, -2.0])


def test_params_are_not_modified_in_place():
    loss, _ = _quadratic()
    params = {n: np.ones(s, np.float32) for n, s in SHAPES.items()}
    before = {n: p.copy() for n, p in params.items()}
    prge_step(params, _pair_loss(loss, params), seed=0, step=0, q=2, eps=1e-2, lr=0.5)
    for n in SHAPES:
        np.testing.assert_array_equal(params[n], before[n])
