"""The forward-only estimators (--estimator): bias and variance on quadratics with a known gradient,
each one's claim where it holds, seeds, resume through the real loop, and bad input."""

import json

import numpy as np
import pytest

from prge_gguf import train
from prge_gguf.cli import main
from prge_gguf.estimators import ESTIMATORS, conmezo, hizoo, lozo, refusal
from prge_gguf.estimators.base import Oracle

SHAPES = {"blk.0.attn_q.weight": (10, 4), "blk.0.attn_v.weight": (6, 4)}  # d = 64
D = 64
NEW = ("hizoo", "lozo", "conmezo")


def _quadratic(curvature, seed=0):
    """0.5 sum h x^2 + c x with diagonal Hessian `curvature`; its minimum is at -c/h ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    c = {n: -h * rng.normal(size=h.shape) for n, h in curvature.items()}

    def loss(p):
        return sum(float((0.5 * curvature[n] * p[n].astype(np.float64) ** 2 + c[n] * p[n]).sum()) for n in p)

    def grad(p):
        return {n: curvature[n] * p[n] + c[n] for n in p}

    return loss, grad, sum(float((-0.5 * c[n] ** 2 / curvature[n]).sum()) for n in c)


def _spread(shapes, low, seed=0):
    """A diagonal Hessian spread log-uniformly over [low, 1]."""
    rng = np.random.default_rng(seed)
    return {n: np.exp(rng.uniform(np.log(low), 0.0, s)) for n, s in shapes.items()}


def _oracle(loss, params):
    def pairs(scaled):
        return (np.array([loss({n: params[n] + d[n] for n in params}) for d in scaled]),
                np.array([loss({n: params[n] - d[n] for n in params}) for d in scaled]))

    return Oracle(pairs, lambda: loss(params))


def _flat(tensors):
    return np.concatenate([tensors[n].ravel() for n in sorted(tensors)])


def _descent(estimate, loss, params, steps, lr, seed, eps=1e-2, **settings):
    """`steps` of SGD on `estimate`'s estimates; returns (final loss, estimator state)."""
    state = {}
    for step in range(steps):
        est = estimate(params, _oracle(loss, params), state, seed=seed, step=step, q=1, eps=eps, **settings)
        state = est.state
        params = {n: p - np.float32(lr) * est.gradient[n] for n, p in params.items()}
    return loss(params), state


def test_train_help_lists_every_estimator_on_one_line_prge_first(capsys):
    assert list(ESTIMATORS)[0] == "prge"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = capsys.readouterr().out.splitlines()
    for name, (summary, _) in ESTIMATORS.items():
        assert f"  {name:<9} {summary}" in shown


def _point():
    loss, grad, _ = _quadratic(_spread(SHAPES, 0.01))
    rng = np.random.default_rng(3)
    params = {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}
    return loss, params, grad(params)


def _cone_mean(gradient, axis, angle):
    """ConMeZO's E[estimate] for a fixed momentum axis: d cos^2 (a.g) a + sin^2 d/(d-1) (g - (a.g) a)."""
    a = _flat(axis) / np.linalg.norm(_flat(axis))
    g = _flat(gradient)
    along = (a @ g) * a
    return D * np.cos(angle) ** 2 * along + np.sin(angle) ** 2 * D / (D - 1) * (g - along)


# (estimator, momentum axis for conmezo, stated variance E|est - E est|^2 / |grad|^2 (low, high)).
# P-RGE's is d + 1 = 65 in theory. Measured at this point with 6,000 draws (the mean's distance from
# the stated expectation, in standard errors, in brackets): prge 64 (0.95), lozo 76 (1.44: rank-2
# directions cost a little variance at d = 64), hizoo 64 (0.95; fresh state: P-RGE's z), conmezo 61
# with a random axis (0.89) and 187 with the axis on the gradient (1.13), where its expectation is
# 3.07x the gradient: relative to that, 187 / 3.07^2 = 20, against P-RGE's 64.
CASES = [("prge", None, (55, 75)), ("lozo", None, (60, 90)), ("hizoo", None, (55, 75)),
         ("conmezo", "random", (55, 75)), ("conmezo", "gradient", (150, 220))]


@pytest.mark.parametrize("name, axis, variance", CASES)
def test_mean_of_estimates_is_the_stated_expectation(name, axis, variance):
    loss, params, gradient = _point()
    if axis == "gradient":
        m = {n: g.astype(np.float32) for n, g in gradient.items()}
    elif axis == "random":
        m = {n: np.random.default_rng(5).normal(size=s).astype(np.float32) for n, s in SHAPES.items()}
    state = {f"conmezo/m/{n}": t for n, t in m.items()} if axis else {}
    expected = _cone_mean(gradient, m, conmezo.ANGLE) if axis else _flat(gradient)
    estimate = ESTIMATORS[name][1]
    n = 6000
    draws = np.array([_flat(estimate(params, _oracle(loss, params), state, seed=1, step=s, q=1,
                                     eps=1e-2).gradient) for s in range(n)])
    spread = ((draws - draws.mean(0)) ** 2).sum(1).mean() / (_flat(gradient) @ _flat(gradient))
    assert variance[0] < spread < variance[1], spread
    # Bias: the mean is the stated expectation within 3 standard errors of a mean of n draws.
    error = np.linalg.norm(draws.mean(0) - expected)
    standard_error = np.sqrt(spread / n) * np.linalg.norm(_flat(gradient))
    assert error < 3 * standard_error, (error, standard_error)


def test_conmezo_with_the_gradient_as_axis_points_along_it_more_often():
    loss, params, gradient = _point()
    g = _flat(gradient)
    state = {f"conmezo/m/{n}": t.astype(np.float32) for n, t in gradient.items()}

    def mean_cosine(name, state):
        draws = [_flat(ESTIMATORS[name][1](params, _oracle(loss, params), state, seed=2, step=s, q=1,
                                           eps=1e-2).gradient) for s in range(500)]
        return np.mean([d @ g / np.linalg.norm(d) / np.linalg.norm(g) for d in draws])

    # A single P-RGE estimate's cosine with the gradient is ~sqrt(2 / (pi d)) = 0.10; in the cone
    # (cos 1.35 = 0.22 of each direction along the axis) measured 0.22.
    assert mean_cosine("prge", {}) < 0.13
    assert mean_cosine("conmezo", state) > 0.18


def test_hizoo_starts_as_prge_bit_for_bit():
    loss, params, _ = _point()
    for step in range(3):
        a = ESTIMATORS["prge"][1](params, _oracle(loss, params), {}, seed=4, step=step, q=2, eps=1e-2)
        b = ESTIMATORS["hizoo"][1](params, _oracle(loss, params), {}, seed=4, step=step, q=2, eps=1e-2)
        for n in SHAPES:
            np.testing.assert_array_equal(a.gradient[n], b.gradient[n])
    assert (a.evaluations, b.evaluations) == (4, 5)  # HiZOO scores the batch at B too


def test_hizoo_beats_prge_on_a_small_ill_conditioned_quadratic():
    # Its claim, where it holds: d = 8, curvatures 1e-3 .. 1. The curvature estimate learns one
    # number a step, so it pays at small d only: at d = 64 (curvatures 0.01 .. 1, 1,500 steps) it
    # reached a higher loss than P-RGE at every lr tried (excess 0.08-0.43 against 0.016-0.058).
    shapes = {"blk.0.attn_q.weight": (4, 2)}
    curvature = {"blk.0.attn_q.weight": np.geomspace(1e-3, 1, 8).reshape(4, 2)}
    loss, _, minimum = _quadratic(curvature)
    start = {n: np.zeros(s, np.float32) for n, s in shapes.items()}
    for seed in range(3):
        plain, _ = _descent(ESTIMATORS["prge"][1], loss, start, 600, 0.1, seed)
        scaled, state = _descent(hizoo.estimate, loss, start, 600, 0.1, seed, smoothing=0.05)
        # Measured excess losses: P-RGE 2.9e-4 .. 1.3e-3, HiZOO 2.2e-7 .. 6.9e-7.
        assert scaled - minimum < 0.01 * (plain - minimum), (seed, plain - minimum, scaled - minimum)
        h = state["hizoo/h/blk.0.attn_q.weight"]
        assert np.corrcoef(np.log(h.ravel()), np.log(curvature["blk.0.attn_q.weight"].ravel()))[0, 1] > 0.9


def test_conmezo_beats_prge_where_the_gradient_turns_slowly():
    # Its claim: once the momentum has found the gradient's direction, sampling around it gains.
    loss, _, minimum = _quadratic(_spread(SHAPES, 0.01))
    start = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
    for seed in range(3):
        plain, _ = _descent(ESTIMATORS["prge"][1], loss, start, 1500, 0.03, seed)
        cone, _ = _descent(conmezo.estimate, loss, start, 1500, 0.03, seed)
        # Measured excess losses: P-RGE 0.044-0.058, ConMeZO 0.017-0.023.
        assert cone - minimum < 0.6 * (plain - minimum), (seed, plain - minimum, cone - minimum)


def test_lozo_steps_stay_in_the_interval_subspace_and_leave_it_between_intervals():
    loss, params, _ = _point()
    shapes = {n: p.shape for n, p in params.items()}
    for step in (0, 7, lozo.INTERVAL - 1):
        est = lozo.estimate(params, _oracle(loss, params), {}, seed=0, step=step, q=3, eps=1e-2)
        for n, v in lozo.subspace(shapes, 0, step).items():
            outside = est.gradient[n] - est.gradient[n] @ v @ np.linalg.pinv(v)  # rows off V's span
            assert np.abs(outside).max() < 1e-4 * np.abs(est.gradient[n]).max()
    first, second = lozo.subspace(shapes, 0, 0), lozo.subspace(shapes, 0, lozo.INTERVAL)
    assert not any(np.allclose(first[n], second[n]) for n in shapes)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_same_seed_same_update_other_seed_other_update(name):
    loss, params, _ = _point()

    def three_steps(seed):
        state, out = {}, params
        for step in range(3):
            est = ESTIMATORS[name][1](out, _oracle(loss, out), state, seed=seed, step=step, q=2, eps=1e-2)
            state = est.state
            out = {n: p - np.float32(0.01) * est.gradient[n] for n, p in out.items()}
        return _flat(out), state

    (a, state_a), (b, state_b), (c, _) = three_steps(9), three_steps(9), three_steps(10)
    np.testing.assert_array_equal(a, b)
    assert state_a.keys() == state_b.keys() and all(np.array_equal(state_a[k], state_b[k]) for k in state_a)
    assert all(k.startswith(f"{name}/") for k in state_a)  # the checkpoint tells whose state it is
    assert not np.array_equal(a, c)


def test_lozo_needs_a_lora_rank_above_its_own():
    assert refusal("lozo", 8) is None and refusal("prge", 1) is None
    assert refusal("lozo", lozo.RANK).startswith("--estimator lozo perturbs each B")


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_interrupted_and_resumed_run_equals_a_whole_one_and_lowers_the_loss(name, tmp_path, monkeypatch):
    data = tmp_path / "rows.jsonl"  # the training rows are the held-out rows: the loss is the objective
    data.write_text('{"text": "a joy to watch", "label": 1}\n{"text": "tedious and flat", "label": 0}\n')
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    # --n-ctx pinned: the decode size train fits depends on the held-out rows, which only `whole` has.
    args = ["train", "--data", str(data), "--label-words", "0=terrible,1=great",
            "--template", "{text} It was", "--steps", "2", "--batch-size", "2", "--targets", "attn_v",
            "--estimator", name, "--n-ctx", "256", "--checkpoint-every", "1", "--threads", "2"]
    assert main([*args, "--valid", str(data), "--eval-every", "2", "--out", str(whole)]) == 0
    rows = map(json.loads, (whole / "metrics.jsonl").read_text().splitlines())
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert evals[-1] < evals[0] - 0.01, evals

    real = train.batch_indices

    def stop_at_step_2(n_examples, batch_size, seed, step):
        if step == 1:  # 0-based: as a Ctrl-C before the second step's first decode
            raise KeyboardInterrupt
        return real(n_examples, batch_size, seed, step)

    monkeypatch.setattr(train, "batch_indices", stop_at_step_2)
    assert main([*args, "--eval-every", "0", "--out", str(cut)]) == 130
    monkeypatch.setattr(train, "batch_indices", real)
    saved = json.loads((cut / "checkpoint.json").read_text())
    assert saved["step"] == 1
    if name != "lozo":  # lozo keeps no state: its V derives from the step
        with np.load(cut / saved["optimizer"]) as state:
            assert state.files and all(k.startswith(f"{name}/") for k in state.files)
    assert main(["train", "--resume", str(cut), "--estimator", name]) == 0
    assert (cut / "adapter.gguf").read_bytes() == (whole / "adapter.gguf").read_bytes()
    assert json.loads((whole / "config.json").read_text())["train"]["estimator"] == name


def _one_line_error(capsys, argv, expected):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {expected}"


def test_an_unknown_estimator_is_a_one_line_error(capsys, tmp_path):
    out = tmp_path / "r"
    _one_line_error(capsys, ["train", "--task", "sst2", "--estimator", "mezo-svrg", "--out", str(out)],
                    "--estimator 'mezo-svrg' is unknown: use one of prge, hizoo, lozo, conmezo "
                    "('prge-gguf train --help' describes them)")
    assert not out.exists()


def test_settings_an_estimator_cannot_take_are_one_line_errors(capsys, tmp_path):
    out = tmp_path / "r"
    _one_line_error(capsys, ["train", "--task", "sst2", "--estimator", "lozo", "--rank", "2",
                             "--out", str(out)],
                    "--estimator lozo perturbs each B (out x r) with rank-2 matrices, which is low-rank only "
                    "for r > 2: use --rank 3 or more, or another --estimator")
    _one_line_error(capsys, ["train", "--task", "sst2", "--estimator", "hizoo", "--optimizer", "adam",
                             "--engine", "torch", "--out", str(out)],
                    "--estimator hizoo estimates the gradient from forward passes; --optimizer adam "
                    "backpropagates: use --optimizer zo, zo-momentum, zo-adam")
    assert not out.exists()


def test_resuming_with_another_estimator_is_a_one_line_error_and_writes_nothing(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"train": {"estimator": "conmezo"}}))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    (tmp_path / "checkpoint.json").write_text(json.dumps({"step": 1, "adapter": "checkpoint-000001.gguf"}))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["train", "--resume", str(tmp_path), "--estimator", "hizoo"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --estimator: a resumed run keeps its saved setting ('conmezo'); drop --estimator, "
        "or start a new run with --out")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

