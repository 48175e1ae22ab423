"""llama.cpp engine (llama-cpp-python's ctypes mirror of llama.h). The only module importing it.

Lifetimes: the engine owns one model, one context, one batch and a thread pool (for
log-probs); adapters it loads are freed when evicted from its small cache, and
everything is freed context-first in `close()`. The context is made at the first decode, so that
`set_context` can size it from the tokenized data before its memory is taken.
Return codes become PrgeError with their meaning.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import llama_cpp.llama_cpp as ll
import numpy as np

from prge_gguf.engine.base import AdapterSet, ScoreRequest
from prge_gguf.errors import PrgeError
from prge_gguf.gguf_header import read_header
from prge_gguf.lora import LoraAdapter, write_gguf

_DECODE_ERRORS = {
    1: "no KV slot for the batch (sequences longer than the context? raise --n-ctx)",
    2: "aborted",
    -1: "invalid input batch",
}
_GGML_LOG_ERROR = 4
_FLASH_ATTN_DISABLED = 0
# Rows of logits a log-sum-exp temporary holds: 32 x 49k float32 is 6 MB, where all of a COPA
# decode's ~800 scored rows at once took 150 MB twice over.
_LSE_ROWS = 32


@ll.llama_log_callback
def _log_errors_only(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # llama.cpp logs every tensor at load; users need only its errors.
    if level == _GGML_LOG_ERROR:
        sys.stderr.write(text.decode("utf-8", errors="replace"))


ll.llama_log_set(_log_errors_only, ctypes.c_void_p())
ll.llama_backend_init()


_SCRATCH = re.compile(r"^prge-adapters-(\d+)-")


def _scratch_dir() -> str:
    """Where adapter files go for the milliseconds between write and load: RAM where possible;
    the folders of engines whose process is gone (killed: no cleanup ran) are removed first."""
    shm = Path("/dev/shm")
    root = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    for folder in root.glob("prge-adapters-*"):
        if (m := _SCRATCH.match(folder.name)) and not _alive(int(m.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
    return str(root)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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


class LlamaEngine:
    """Scores many sequences per `llama_decode`, logits only where scored."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 1024,
        n_seq_max: int = 64,
        threads: int | None = None,
        n_gpu_layers: int = 0,
        adapter_cache: int = 2,
    ) -> None:
        self.model_path = Path(model_path)
        self.header = read_header(self.model_path)  # clear error for missing / non-GGUF files
        # A training step loads 2q fresh adapters and never reuses them, evaluation one: a larger
        # cache only holds memory (~10 MB an adapter on SmolLM2's seven projections; 8 cost 58 MB).
        self.n_ctx, self.n_seq_max, self._cache_size = n_ctx, n_seq_max, adapter_cache
        self._model = self._ctx = None
        self._batch: _Batch | None = None
        self._adapters: OrderedDict[int, ll.llama_adapter_lora_p] = OrderedDict()
        self._active: tuple[tuple[int, float], ...] = ()
        self._threads = threads or min(os.cpu_count() or 1, 8)
        # numpy releases the GIL, so log-sum-exps spread over threads: one thread's pass over
        # COPA's ~800 scored rows of 49k logits was 0.29 s of a 0.47 s H100 step.
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="prge-lse")
        # Seconds spent in llama_decode, in adapter swaps (write, load, set) and in turning
        # logits into log-probs: what scripts/bench_speed.py splits a step into.
        self.timings: Counter[str] = Counter()
        self._tmp = tempfile.TemporaryDirectory(prefix=f"prge-adapters-{os.getpid()}-", dir=_scratch_dir())

        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        self._model = ll.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not self._model:
            self.close()
            raise PrgeError(
                f"{self.model_path}: llama.cpp could not load this model "
                f"(architecture '{self.header.architecture}' unsupported, or the file is corrupt)"
            )
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self._add_bos = bool(ll.llama_vocab_get_add_bos(self._vocab))

    # -- context ------------------------------------------------------------------------------
    def set_context(self, n_ctx: int) -> None:
        """Decode at most `n_ctx` tokens at a time from now on (a new context, made when needed)."""
        if n_ctx != self.n_ctx:
            self._free_context()
            self.n_ctx = n_ctx

    def _seqs_per_decode(self) -> int:
        # llama.cpp refuses more sequences than context cells (an assertion, not an error code).
        return min(self.n_seq_max, self.n_ctx)

    def _context(self) -> ll.llama_context_p:
        if self._ctx:
            return self._ctx
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = self.n_ctx
        cparams.n_seq_max = self._seqs_per_decode()
        cparams.kv_unified = True
        # Off, as in llama-cpp-python's Llama(): with "auto" the CPU flash-attention path moved
        # SmolLM2's log-probs by up to 0.6 nats against it (measured 2026-11-25).
        cparams.flash_attn_type = _FLASH_ATTN_DISABLED
        cparams.no_perf = True
        cparams.n_threads = cparams.n_threads_batch = self._threads
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise PrgeError(f"llama.cpp could not create a context of {self.n_ctx} tokens (out of memory?)")
        self._batch = _Batch(self.n_ctx)
        return self._ctx

    def _free_context(self) -> None:
        self._batch = None
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None
        self._active = ()  # adapters are set per context

    # -- text ---------------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool, parse_special: bool = False) -> list[int]:
        """Token ids of `text`; BOS is added only if `add_special` and the model asks for it;
        `parse_special` reads control tokens such as `<|im_start|>` in the text as such."""
        raw = text.encode("utf-8")
        n_max = len(raw) + 8
        buf = (ll.llama_token * n_max)()
        n = ll.llama_tokenize(self._vocab, raw, len(raw), buf, n_max, add_special, parse_special)
        if n < 0:
            raise PrgeError(f"tokenization needs {-n} tokens, more than expected for {len(raw)} bytes")
        return list(buf[:n])

    def token_text(self, token: int) -> str:
        """The text of one token, control tokens rendered (`<|im_end|>`)."""
        return self._piece(token, special=True).decode("utf-8", errors="replace")

    def _piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = ll.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)]

    def special_tokens(self) -> dict[str, str]:
        """`bos_token` and `eos_token` texts, as chat templates expect them."""
        return {"bos_token": self.token_text(ll.llama_vocab_bos(self._vocab)),
                "eos_token": self.token_text(ll.llama_vocab_eos(self._vocab))}

    @property
    def chat_template(self) -> str | None:
        """The model's `tokenizer.chat_template` (Jinja), if it has one."""
        value = self.header.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    # -- adapters -----------------------------------------------------------------------------
    def _load_adapter(self, adapter: LoraAdapter) -> ll.llama_adapter_lora_p:
        handle = self._adapters.get(adapter.uid)
        if handle is not None:
            self._adapters.move_to_end(adapter.uid)
            return handle
        path = Path(self._tmp.name) / f"adapter-{adapter.uid}.gguf"
        write_gguf(adapter, path)
        handle = ll.llama_adapter_lora_init(self._model, str(path).encode())
        path.unlink()
        if not handle:
            raise PrgeError(
                "llama.cpp refused the adapter (its tensors do not match this model's shapes)"
            )
        self._adapters[adapter.uid] = handle
        return handle

    def _set_adapters(self, adapters: AdapterSet) -> None:
        wanted = tuple((a.uid, float(s)) for a, s in adapters)
        if wanted == self._active:
            return
        t0 = time.perf_counter()
        handles = [self._load_adapter(a) for a, _ in adapters]
        arr = (ll.llama_adapter_lora_p_ctypes * max(1, len(handles)))(*handles)
        scales = (ctypes.c_float * max(1, len(handles)))(*(s for _, s in wanted))
        rc = ll.llama_set_adapters_lora(self._context(), arr if handles else None, len(handles), scales)
        if rc != 0:
            raise PrgeError(f"llama_set_adapters_lora failed (code {rc})")
        self._active = wanted
        self._evict({uid for uid, _ in wanted})
        self.timings["adapter"] += time.perf_counter() - t0

    def _evict(self, keep: set[int]) -> None:
        while len(self._adapters) > self._cache_size:
            uid = next((u for u in self._adapters if u not in keep), None)
            if uid is None:
                return
            ll.llama_adapter_lora_free(self._adapters.pop(uid))

    # -- scoring ------------------------------------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest], adapters: AdapterSet) -> list[list[np.ndarray]]:
        """Log-probs of each request's candidates at its positions (see `Engine.score`)."""
        self._set_adapters(adapters)
        results: list[list[np.ndarray]] = []
        group: list[ScoreRequest] = []
        n_tokens = 0
        for req in requests:
            if req.n_tokens > self.n_ctx:
                raise PrgeError(
                    f"a sequence of {req.n_tokens} tokens does not fit the context of {self.n_ctx} "
                    f"tokens (raise --n-ctx or shorten the example)"
                )
            if group and (n_tokens + req.n_tokens > self.n_ctx or len(group) == self._seqs_per_decode()):
                results.extend(self._decode(group))
                group, n_tokens = [], 0
            group.append(req)
            n_tokens += req.n_tokens
        if group:
            results.extend(self._decode(group))
        return results

    def generate(self, prompt: list[int], adapters: AdapterSet, max_tokens: int) -> list[int]:
        """Greedy continuation of `prompt` (up to `max_tokens`, stopping at end-of-generation)."""
        if len(prompt) + max_tokens > self.n_ctx:
            raise PrgeError(f"prompt ({len(prompt)} tokens) + --max-tokens {max_tokens} exceed the "
                            f"context of {self.n_ctx} tokens (raise --n-ctx)")
        self._set_adapters(adapters)
        n = len(prompt)
        self._run(np.array(prompt), np.arange(n), np.zeros(n), np.arange(n) == n - 1, clear=True)
        out: list[int] = []
        while len(out) < max_tokens:
            logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,))
            token = int(np.argmax(logits))
            if ll.llama_vocab_is_eog(self._vocab, token):
                break
            out.append(token)
            self._run(np.array([token]), np.array([n + len(out) - 1]), np.zeros(1), np.ones(1), clear=False)
        return out

    def _run(self, token: np.ndarray, pos: np.ndarray, seq: np.ndarray, wants: np.ndarray,
             clear: bool) -> None:
        """One llama_decode of these tokens at these positions of these sequences, with logits
        where `wants`."""
        ctx = self._context()
        batch = self._batch.fill(token, pos, seq, wants)
        if clear:
            ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
        t0 = time.perf_counter()
        rc = ll.llama_decode(ctx, batch)
        # A GPU decode returns before its kernels end; without waiting here their time would be
        # counted as the first logits read's.
        ll.llama_synchronize(ctx)
        self.timings["decode"] += time.perf_counter() - t0
        if rc != 0:
            raise PrgeError(f"llama_decode failed: {_DECODE_ERRORS.get(rc, f'fatal error {rc}')}")

    def detokenize(self, tokens: list[int]) -> str:
        """Text of `tokens` (control tokens left out)."""
        return b"".join(self._piece(t, special=False) for t in tokens).decode("utf-8", errors="replace")

    def score_each(self, requests: Sequence[ScoreRequest],
                   adapters: Sequence[LoraAdapter]) -> list[list[list[np.ndarray]]]:
        """One adapter at a time (llama.cpp applies one adapter set per context)."""
        return [self.score(requests, [(a, 1.0)]) for a in adapters]

    def _decode(self, group: list[ScoreRequest]) -> list[list[np.ndarray]]:
        lengths = [req.n_tokens for req in group]
        starts = np.cumsum([0, *lengths[:-1]])
        wants = np.zeros(sum(lengths), bool)
        for start, req in zip(starts, group, strict=True):
            wants[start + np.array(req.positions)] = True
        # Each decode scores fresh sequences: nothing cached may leak in from the last one.
        self._run(np.concatenate([req.tokens for req in group]),
                  np.concatenate([np.arange(n) for n in lengths]),
                  np.repeat(np.arange(len(group)), lengths), wants, clear=True)
        t0 = time.perf_counter()
        n_out = int(np.count_nonzero(wants))
        logits = np.ctypeslib.as_array(ll.llama_get_logits(self._ctx), shape=(n_out, self.n_vocab))
        lse = np.empty(n_out, logits.dtype)
        bounds = np.linspace(0, n_out, min(self._threads, n_out) + 1).astype(int)
        jobs = [self._pool.submit(_log_sum_exp, logits, lse, a, b) for a, b in itertools.pairwise(bounds)]
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

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Free batch, context (before the model), adapters, model."""
        self._free_context()
        for handle in self._adapters.values():
            ll.llama_adapter_lora_free(handle)
        self._adapters.clear()
        if self._model:
            ll.llama_model_free(self._model)
            self._model = None
        self._pool.shutdown()
        self._tmp.cleanup()

    def __enter__(self) -> LlamaEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_tmp", None) is not None:
            self.close()
