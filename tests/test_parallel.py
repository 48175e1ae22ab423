"""A step's perturbations scored on several llama.cpp contexts at once (--parallel): the same
log-probs and the same update, bit for bit, as one adapter at a time; failures end cleanly."""

import threading

import llama_cpp.llama_cpp as ll
import numpy as np
import pytest

from prge_gguf.data import tokenize_example
from prge_gguf.engine.llama import LlamaEngine
from prge_gguf.errors import PrgeError
from prge_gguf.lora import init_lora_fa
from prge_gguf.prge import prge_step
from prge_gguf.settings import default_parallel
from prge_gguf.tasks import builtin_task
from prge_gguf.train import TrainConfig, pair_loss_fn

pytestmark = pytest.mark.slow

N_CTX = 256


class _OneAtATime:
    """An engine whose score_each is the sequential path: one adapter set on one context at a time."""

    def __init__(self, engine: LlamaEngine) -> None:
        self.engine = engine

    def score_each(self, requests, adapters):
        return [self.engine.score(requests, [(a, 1.0)]) for a in adapters]


@pytest.fixture(scope="module")
def batch(engine):
    task = builtin_task("sst2")
    return [tokenize_example(engine, e) for e in task.examples(task.train_file)[:6]]


def _adapter(engine, targets=("attn_q", "attn_v", "ffn_down"), seed=0):
    """A LoRA-FA adapter with a non-zero B, so that every perturbation moves the log-probs."""
    start = init_lora_fa(engine.header, list(targets), 8, 16, seed=seed)
    rng = np.random.default_rng(seed)
    return start.with_b({n: (0.05 * rng.standard_normal(b.shape)).astype(np.float32)
                         for n, b in start.b.items()})


def _perturbed(adapter, n, seed=1):
    rng = np.random.default_rng(seed)
    return [adapter.with_b({k: (b + 0.05 * rng.standard_normal(b.shape)).astype(np.float32)
                            for k, b in adapter.b.items()}) for _ in range(n)]


def _assert_same(got, want):
    assert len(got) == len(want)
    for per_adapter_got, per_adapter_want in zip(got, want, strict=True):
        for rows_got, rows_want in zip(per_adapter_got, per_adapter_want, strict=True):
            for g, w in zip(rows_got, rows_want, strict=True):
                np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(("parallel", "n_adapters"), [(1, 4), (3, 4), (8, 2)])
def test_parallel_scores_are_the_sequential_scores_bit_for_bit(model_path, batch, parallel, n_adapters):
    # 3 contexts for 4 adapters: one context overwrites its adapter with a second; 8 for 2 (more
    # contexts than a q = 1 step's perturbations): only 2 are made.
    requests = [r for ex in batch for r in ex.requests]
    with LlamaEngine(model_path, n_ctx=N_CTX, threads=2, parallel=parallel) as engine:
        adapters = _perturbed(_adapter(engine), n_adapters)
        _assert_same(engine.score_each(requests, adapters),
                     _OneAtATime(engine).score_each(requests, adapters))
        assert len(engine._slots) == min(parallel, n_adapters)
        # Another layout (other targets): each context loads an adapter anew.
        adapters = _perturbed(_adapter(engine, targets=("attn_k",), seed=3), 2)
        _assert_same(engine.score_each(requests, adapters),
                     _OneAtATime(engine).score_each(requests, adapters))


def test_parallel_step_gives_the_sequential_update_bit_for_bit(model_path, batch):
    cfg = TrainConfig(q=2, batch_size=len(batch), eps=1e-2)
    with LlamaEngine(model_path, n_ctx=N_CTX, threads=2, parallel=4) as engine:
        adapter = _adapter(engine)
        updates = [prge_step(adapter.b, pair_loss_fn(e, adapter, batch, cfg), seed=7, step=3, q=cfg.q,
                             eps=cfg.eps, lr=1e-2) for e in (engine, _OneAtATime(engine))]
    (b_par, plus_par, minus_par), (b_seq, plus_seq, minus_seq) = updates
    np.testing.assert_array_equal(plus_par, plus_seq)
    np.testing.assert_array_equal(minus_par, minus_seq)
    assert not np.array_equal(plus_par, minus_par)
    for name in b_seq:
        np.testing.assert_array_equal(b_par[name], b_seq[name])


def test_a_context_that_fails_to_allocate_ends_cleanly(model_path, batch, monkeypatch):
    requests = [r for ex in batch for r in ex.requests]
    threads_before = threading.active_count()
    real_init, made = ll.llama_init_from_model, []

    def second_fails(model, cparams):
        made.append(cparams.n_ctx)
        return None if len(made) == 2 else real_init(model, cparams)

    with LlamaEngine(model_path, n_ctx=N_CTX, threads=2, parallel=3) as engine:
        adapters = _perturbed(_adapter(engine), 4)
        monkeypatch.setattr(ll, "llama_init_from_model", second_fails)
        with pytest.raises(PrgeError, match="context 2 of --parallel 3: llama.cpp could not create"):
            engine.score_each(requests, adapters)
        assert engine._slots == [] and engine._workers is None
        monkeypatch.setattr(ll, "llama_init_from_model", real_init)
        # Nothing half-made stays behind: the next step makes its contexts and scores.
        _assert_same(engine.score_each(requests, adapters),
                     _OneAtATime(engine).score_each(requests, adapters))
    assert threading.active_count() == threads_before


def test_a_decode_that_fails_in_a_worker_raises_and_leaves_the_engine_usable(model_path, batch):
    requests = [r for ex in batch for r in ex.requests]
    too_long = type(requests[0])(tuple(range(N_CTX + 1)), (0,), ((1,),))
    with LlamaEngine(model_path, n_ctx=N_CTX, threads=2, parallel=2) as engine:
        adapters = _perturbed(_adapter(engine), 2)
        with pytest.raises(PrgeError, match="does not fit the context"):
            engine.score_each([*requests, too_long], adapters)
        _assert_same(engine.score_each(requests, adapters),
                     _OneAtATime(engine).score_each(requests, adapters))


def test_default_parallel_is_one_context_per_two_cpu_threads_at_least_two_and_eight_on_a_gpu(model_path):
    assert [default_parallel(0, t) for t in (1, 2, 3, 4, 8, 16, 64)] == [1, 2, 2, 2, 4, 8, 8]
    assert default_parallel(-1, 2) == default_parallel(10, 16) == 8
    with pytest.raises(PrgeError, match="--parallel must be >= 1, got 0"):
        LlamaEngine(model_path, parallel=0)
