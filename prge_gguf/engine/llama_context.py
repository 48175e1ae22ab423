"""One llama.cpp context on a loaded model: its KV cache and batch, decodes, log-probs.

The engine holds one for evaluation and generation and, for a step's perturbations, several
more on the same model that decode at the same time from worker threads (llama-cpp-python's
ctypes calls release the GIL). A context touches only its own state, its timings included.
"""

from __future__ import annotations

import ctypes
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor

import llama_cpp.llama_cpp as ll
import numpy as np

from prge_gguf.errors import PrgeError
from prge_gguf.scoring import ScoreRequest

_DECODE_ERRORS = {
    1: "no KV slot for the batch (sequences longer than the context? raise --n-ctx)",
    2: "aborted",
    -1: "invalid input batch",
}
_FLASH_ATTN_DISABLED = 0
# llama.h of a llama.cpp built with patches/llama-cpp-adapter-routing.patch: adapters applied to
# chosen sequences only, so one decode scores several adapters (None: a build without it).
_set_routes = getattr(ll._lib, "llama_set_adapters_lora_seqs", None)
if _set_routes is not None:
    _set_routes.argtypes = [ll.llama_context_p_ctypes, ctypes.POINTER(ll.llama_adapter_lora_p_ctypes),
                            ctypes.c_size_t, ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t]
    _set_routes.restype = ctypes.c_int32
ROUTING = _set_routes is not None
# Rows of logits a log-sum-exp temporary holds: 32 x 49k float32 is 6 MB, where all of a COPA
# decode's ~800 scored rows at once took 150 MB twice over.
_LSE_ROWS = 32


def context_params(n_ctx: int, n_seq_max: int, threads: int) -> ll.llama_context_params:
    """The parameters every context of the engine is made with: `n_ctx` tokens per decode in
    at most `n_seq_max` sequences, `threads` CPU threads."""
    cparams = ll.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_ctx
    cparams.n_seq_max = n_seq_max
    cparams.kv_unified = True
    # Off, as in llama-cpp-python's Llama(): with "auto" the CPU flash-attention path moved
    # SmolLM2's log-probs by up to 0.6 nats against it (measured 2026-11-25).
    cparams.flash_attn_type = _FLASH_ATTN_DISABLED
    cparams.no_perf = True
    cparams.n_threads = cparams.n_threads_batch = threads
    return cparams


def new_context(model: ll.llama_model_p, cparams: ll.llama_context_params) -> ll.llama_context_p:
    """`llama_init_from_model`, its failure a PrgeError."""
    ctx = ll.llama_init_from_model(model, cparams)
    if not ctx:
        raise PrgeError(f"llama.cpp could not create a context of {cparams.n_ctx} tokens (out of memory? "
                        "lower --n-ctx or --parallel)")
    return ctx


def _log_sum_exp(logits: np.ndarray, out: np.ndarray, start: int, stop: int) -> None:
    """out[i] = log(sum(exp(logits[i]))) for rows start..stop-1, a few rows at a time."""
    for i in range(start, stop, _LSE_ROWS):
        rows = logits[i:min(i + _LSE_ROWS, stop)]
        peak = rows.max(axis=1, keepdims=True)
        shifted = np.subtract(rows, peak)
        np.exp(shifted, out=shifted)
        out[i:i + len(rows)] = peak[:, 0] + np.log(shifted.sum(axis=1))


class _Batch:
    """A llama_batch over numpy arrays, filled by slices: token by token through ctypes costs
    ~2 us a token, a sizeable share of a GPU step over thousands of tokens. One sequence id a
    token: token i's list of ids is seq[i:i+1]."""

    def __init__(self, size: int) -> None:
        self.token, self.pos, self.seq = (np.zeros(size, np.int32) for _ in range(3))
        self.n_seq_id = np.ones(size, np.int32)
        self.logits = np.zeros(size, np.int8)
        self._seq_lists = self.seq.ctypes.data + self.seq.itemsize * np.arange(size, dtype=np.uintp)
        c_int_p = ctypes.POINTER(ctypes.c_int)
        self.struct = ll.llama_batch(
            0, self.token.ctypes.data_as(c_int_p), None, self.pos.ctypes.data_as(c_int_p),
            self.n_seq_id.ctypes.data_as(c_int_p), self._seq_lists.ctypes.data_as(ctypes.POINTER(c_int_p)),
            self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_byte)))

    def fill(self, token: np.ndarray, pos: np.ndarray, seq: np.ndarray, wants: np.ndarray) -> ll.llama_batch:
        """The batch of these tokens (positions, sequence ids, logits wanted)."""
        n = len(token)
        self.token[:n], self.pos[:n], self.seq[:n], self.logits[:n] = token, pos, seq, wants
        self.struct.n_tokens = n
        return self.struct


class LlamaContext:
    """A context of `n_ctx` tokens per decode, scoring many sequences per `llama_decode` with
    logits only where scored. `lse_pool` spreads the log-sum-exps; `timings` collects seconds
    spent in `decode` and `logits`."""

    def __init__(self, model: ll.llama_model_p, cparams: ll.llama_context_params, n_vocab: int,
                 lse_pool: Executor, lse_jobs: int, timings: Counter[str]) -> None:
        self.ctx = new_context(model, cparams)
        self.n_ctx, self.n_seq_max, self.n_vocab = cparams.n_ctx, cparams.n_seq_max, n_vocab
        self._batch = _Batch(self.n_ctx)
        self._lse_pool, self._lse_jobs = lse_pool, lse_jobs
        self.timings = timings
        self._routes = (ll.llama_adapter_lora_p_ctypes * 0)()

    def set_adapters(self, handles: Sequence[ll.llama_adapter_lora_p], scales: Sequence[float]) -> None:
        """Apply these loaded adapters at these scales from the next decode on (none: the base model).
        llama.cpp re-reserves its scheduler whenever the set changes."""
        arr = (ll.llama_adapter_lora_p_ctypes * max(1, len(handles)))(*handles)
        c_scales = (ctypes.c_float * max(1, len(handles)))(*scales)
        rc = ll.llama_set_adapters_lora(self.ctx, arr if handles else None, len(handles), c_scales)
        if rc != 0:
            raise PrgeError(f"llama_set_adapters_lora failed (code {rc})")
        if ROUTING:  # a routing of former adapters must not outlive them (a new one may reuse an address)
            _set_routes(self.ctx, None, 0, None, 0)

    def route(self, handles: Sequence[ll.llama_adapter_lora_p]) -> None:
        """Set these adapters (scale 1) for `score_routed`, which gives each its own sequences
        (needs a build with adapter routing: ROUTING)."""
        self.set_adapters(handles, [1.0] * len(handles))
        self._routes = (ll.llama_adapter_lora_p_ctypes * len(handles))(*handles)

    def score(self, requests: Sequence[ScoreRequest]) -> list[list[np.ndarray]]:
        """Log-probs of each request's candidates at its positions, as few decodes as fit."""
        return self._score(requests, None)

    def score_routed(self, requests: Sequence[ScoreRequest], n: int) -> list[list[list[np.ndarray]]]:
        """`score(requests)` under each of the first `n` adapters `route` set, packed into shared
        decodes: each adapter's scores are those of the same decodes with it alone, bit for bit
        (it adds zeros to the other sequences)."""
        flat = self._score(list(requests) * n, np.repeat(np.arange(n, dtype=np.int32), len(requests)))
        return [flat[k * len(requests):(k + 1) * len(requests)] for k in range(n)]

    def _score(self, requests: Sequence[ScoreRequest], routes: np.ndarray | None) -> list[list[np.ndarray]]:
        results: list[list[np.ndarray]] = []
        start = n_tokens = 0
        for i, req in enumerate(requests):
            if req.n_tokens > self.n_ctx:
                raise PrgeError(
                    f"a sequence of {req.n_tokens} tokens does not fit the context of {self.n_ctx} "
                    f"tokens (raise --n-ctx or shorten the example)"
                )
            if i > start and (n_tokens + req.n_tokens > self.n_ctx or i - start == self.n_seq_max):
                results.extend(self._decode(requests[start:i], None if routes is None else routes[start:i]))
                start, n_tokens = i, 0
            n_tokens += req.n_tokens
        if start < len(requests):
            results.extend(self._decode(requests[start:], None if routes is None else routes[start:]))
        return results

    def run(self, token: np.ndarray, pos: np.ndarray, seq: np.ndarray, wants: np.ndarray,
            clear: bool) -> None:
        """One llama_decode of these tokens at these positions of these sequences, with logits
        where `wants`."""
        batch = self._batch.fill(token, pos, seq, wants)
        if clear:
            ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
        t0 = time.perf_counter()
        rc = ll.llama_decode(self.ctx, batch)
        # A GPU decode returns before its kernels end; without waiting here their time would be
        # counted as the first logits read's.
        ll.llama_synchronize(self.ctx)
        self.timings["decode"] += time.perf_counter() - t0
        if rc != 0:
            raise PrgeError(f"llama_decode failed: {_DECODE_ERRORS.get(rc, f'fatal error {rc}')}")

    def last_logits(self) -> np.ndarray:
        """The logits of the last token decoded with logits wanted."""
        return np.ctypeslib.as_array(ll.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))

    def _decode(self, group: Sequence[ScoreRequest], routes: np.ndarray | None) -> list[list[np.ndarray]]:
        if routes is not None:  # sequence i (the group's i-th) goes to adapter routes[i]
            seq_adapter = np.ascontiguousarray(routes, np.int32)
            rc = _set_routes(self.ctx, self._routes, len(self._routes),
                             seq_adapter.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), len(seq_adapter))
            if rc != 0:
                raise PrgeError(f"llama_set_adapters_lora_seqs failed (code {rc})")
        lengths = [req.n_tokens for req in group]
        starts = np.cumsum([0, *lengths[:-1]])
        wants = np.zeros(sum(lengths), bool)
        for start, req in zip(starts, group, strict=True):
            wants[start + np.array(req.positions)] = True
        # Each decode scores fresh sequences: nothing cached may leak in from the last one.
        self.run(np.concatenate([req.tokens for req in group]),
                 np.concatenate([np.arange(n) for n in lengths]),
                 np.repeat(np.arange(len(group)), lengths), wants, clear=True)
        t0 = time.perf_counter()
        n_out = int(np.count_nonzero(wants))
        logits = np.ctypeslib.as_array(ll.llama_get_logits(self.ctx), shape=(n_out, self.n_vocab))
        lse = np.empty(n_out, logits.dtype)
        bounds = np.linspace(0, n_out, min(self._lse_jobs, n_out) + 1).astype(int)
        jobs = [self._lse_pool.submit(_log_sum_exp, logits, lse, a, b) for a, b in itertools.pairwise(bounds)]
        for job in jobs:
            job.result()
        out, row = [], 0
        for req in group:
            # Outputs come in batch (= position) order, one row per distinct scored position.
            rows = {p: row + k for k, p in enumerate(sorted(set(req.positions)))}
            row += len(rows)
            pairs = zip(req.positions, req.candidates, strict=True)
            out.append([logits[rows[p], list(c)] - lse[rows[p]] for p, c in pairs])
        self.timings["logits"] += time.perf_counter() - t0
        return out

    def free(self) -> None:
        """Free the context (before its model is freed)."""
        if self.ctx:
            ll.llama_free(self.ctx)
            self.ctx = None
