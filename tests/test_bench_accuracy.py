"""scripts/bench/bench_accuracy.py's step budget: a row's steps come from the seconds per forward
token of its probe's timed steps and the forward tokens of an average step of the training data,
not from the few batches the probe happened to draw."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

from bench_accuracy import budget_steps, expected_step  # noqa: E402


def _probe_rows(batches: list[list[int]], passes: int, s_per_token: float) -> list[dict]:
    """Metrics rows of a probe's timed steps, as train logs them: tokens = passes x the batch's tokens."""
    return [{"tokens": passes * sum(b), "step_s": s_per_token * passes * sum(b)} for b in batches]


def test_an_average_step_of_the_data_not_of_the_probes_batches():
    # The training examples take 10 or 30 tokens (mean 20); the probe drew only short ones.
    batches = [[10, 10, 10, 10], [10, 10, 10, 30]]
    step = expected_step(_probe_rows(batches, passes=2, s_per_token=0.01), batches, mean_tokens=20)
    assert step["tokens"] == pytest.approx(2 * 4 * 20)
    assert step["s_per_token"] == pytest.approx(0.01)
    assert step["step_s"] == pytest.approx(0.01 * 160)
    assert budget_steps(step, budget_s=160) == 100


def test_seconds_per_token_weighs_each_step_by_its_tokens():
    # A long step that ran fast per token and a short one that ran slow: the rate is their sums' ratio.
    timed = [{"tokens": 300, "step_s": 0.3}, {"tokens": 100, "step_s": 0.5}]
    step = expected_step(timed, [[150], [50]], mean_tokens=100)
    assert step["s_per_token"] == pytest.approx(0.8 / 400)
    assert step["tokens"] == pytest.approx(2 * 1 * 100)


def test_a_token_budget_takes_the_average_steps_tokens():
    step = {"step_s": 2.0, "tokens": 400.0, "s_per_token": 0.005}
    assert budget_steps(step, budget_s=60, budget_tokens=40_000) == 100
    assert budget_steps(step, budget_s=60) == 30
    assert budget_steps(step, budget_s=1) == 1  # at least one step
