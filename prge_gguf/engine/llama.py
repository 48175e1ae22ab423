"""llama.cpp engine (llama-cpp-python's ctypes mirror of llama.h). The only package importing it.

Lifetimes: the engine owns one model; one context (`LlamaContext`) for evaluation and generation,
whose adapters come from a small cache; `parallel` more contexts for the perturbations of a step,
each holding one resident adapter that is overwritten rather than re-created (`llama_adapters`),
decoded at once from as many worker threads; a thread pool for log-probs. The contexts are made at
their first decode, so that `set_context` can size them from the tokenized data before their
memory is taken; everything is freed contexts first in `close()`.
Return codes become PrgeError with their meaning.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp.llama_cpp as ll
import numpy as np

from prge_gguf.engine.base import AdapterSet
from prge_gguf.engine.llama_adapters import ResidentAdapter, layout, load_adapter, locate_tensors
from prge_gguf.engine.llama_context import ROUTING, LlamaContext, context_params
from prge_gguf.errors import PrgeError
from prge_gguf.gguf_header import read_header
from prge_gguf.lora import LoraAdapter
from prge_gguf.scoring import ScoreRequest
from prge_gguf.settings import default_parallel
from prge_gguf.signals import sigint_held
from prge_gguf.targets import EXPERT_TARGETS

_GGML_LOG_ERROR = 4
# llama.cpp's LLAMA_MAX_SEQ: the most sequences a context can hold.
_MAX_SEQUENCES = 256


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


@dataclass
class _Slot:
    """A context that scores perturbations under its resident adapters: one, written with each
    perturbation in turn, or (with adapter routing) one a perturbation, all scored at once."""

    context: LlamaContext
    share: int  # the perturbations it scores at once: 1, or with routing its share of a step's
    residents: list[ResidentAdapter] = field(default_factory=list)
    timings: Counter[str] = field(default_factory=Counter)

    def score_each(self, requests: Sequence[ScoreRequest],
                   adapters: Sequence[LoraAdapter]) -> list[list[list[np.ndarray]]]:
        """Each adapter's scores."""
        if self.share == 1:
            out = []
            for adapter in adapters:
                self._write([adapter])
                out.append(self.context.score(requests))
            return out
        self._write(adapters)
        return self.context.score_routed(requests, len(adapters))

    def _write(self, adapters: Sequence[LoraAdapter]) -> None:
        t0 = time.perf_counter()
        for resident, adapter in zip(self.residents, adapters, strict=False):
            resident.write(adapter)
        self.timings["adapter"] += time.perf_counter() - t0

    def free_residents(self) -> None:
        """Drop the resident adapters from the context and free them."""
        residents, self.residents = self.residents, []
        if residents:
            self.context.set_adapters([], [])
        for resident in residents:
            resident.free()


class LlamaEngine:
    """Scores many sequences per `llama_decode`, logits only where scored; a step's perturbations
    on `parallel` contexts at once."""

    backprop = False  # forward passes only

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 1024,
        n_seq_max: int = 64,
        threads: int | None = None,
        n_gpu_layers: int = 0,
        adapter_cache: int = 2,
        parallel: int | None = None,
        routing: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.header = read_header(self.model_path)  # clear error for missing / non-GGUF files
        self._threads = threads or min(os.cpu_count() or 1, 8)
        self.parallel = default_parallel(n_gpu_layers, self._threads)
        # Evaluation loads one adapter and scores it many times; a larger cache only holds memory
        # (~10 MB an adapter on SmolLM2's seven projections; 8 cost 58 MB).
        self.n_ctx, self.n_seq_max, self._cache_size = n_ctx, n_seq_max, adapter_cache
        self._model = None
        self._main: LlamaContext | None = None
        self._slots: list[_Slot] = []
        self._workers: ThreadPoolExecutor | None = None
        self.set_parallel(self.parallel if parallel is None else parallel)
        # Adapter routing (a patched llama.cpp: ROUTING): a context scores its share of a step's
        # perturbations in shared decodes rather than one after another. Off unless asked for: on
        # the CPU it steps slower (bench/cpu_routing.md), and on a GPU it is not measured yet.
        self.routing = False
        self.set_routing(routing)
        self._adapters: OrderedDict[int, ll.llama_adapter_lora_p] = OrderedDict()
        self._active: tuple[tuple[int, float], ...] = ()
        # numpy releases the GIL, so log-sum-exps spread over threads: one thread's pass over
        # COPA's ~800 scored rows of 49k logits was 0.29 s of a 0.47 s H100 step.
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="prge-lse")
        # Seconds spent in llama_decode, in adapter swaps (write, load, set) and in turning
        # logits into log-probs: what scripts/bench/bench_speed.py splits a step into. With parallel
        # contexts these add up each context's seconds, more than the wall time.
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

    @property
    def threads(self) -> int:
        """CPU threads in all: the evaluation context's, shared out among the parallel ones."""
        return self._threads

    # -- contexts -----------------------------------------------------------------------------
    def set_parallel(self, parallel: int) -> None:
        """Score a step's perturbations on up to `parallel` contexts from now on (made when needed)."""
        if parallel < 1:
            raise PrgeError(f"--parallel must be >= 1, got {parallel}")
        if parallel != self.parallel:
            self._free_slots()
            self.parallel = parallel

    def set_routing(self, routing: bool) -> None:
        """Route a context's perturbations to their own sequences in shared decodes (True), or
        score them one after another (False), from now on."""
        if routing and not ROUTING:
            raise PrgeError("--routing needs llama.cpp built with patches/llama-cpp-adapter-routing.patch "
                            "(python scripts/build_llama_routing.py)")
        if routing != self.routing:
            self._free_slots()
            self.routing = routing

    def set_context(self, n_ctx: int) -> None:
        """Decode at most `n_ctx` tokens at a time from now on (new contexts, made when needed)."""
        if n_ctx != self.n_ctx:
            self._free_contexts()
            self.n_ctx = n_ctx

    def _new_context(self, threads: int, timings: Counter[str], share: int = 1) -> LlamaContext:
        # A routed context decodes its `share` of a step's perturbations together: share x the
        # tokens and sequences. llama.cpp refuses more sequences than context cells or
        # _MAX_SEQUENCES (assertions, not error codes).
        n_ctx = self.n_ctx * share
        cparams = context_params(n_ctx, min(self.n_seq_max * share, _MAX_SEQUENCES, n_ctx), threads)
        return LlamaContext(self._model, cparams, self.n_vocab, self._pool, self._threads, timings)

    def _context(self) -> LlamaContext:
        if self._main is None:
            self._main = self._new_context(self._threads, self.timings)
        return self._main

    def _slots_for(self, n: int, adapter: LoraAdapter) -> list[_Slot]:
        """min(parallel, n) contexts, each holding resident adapters of `adapter`'s layout: one,
        or with adapter routing as many as the context's share of the n. The threads are shared
        out among the contexts a step uses."""
        want = min(self.parallel, n)
        per = -(-n // want) if self.routing else 1
        if per > 1 and set(adapter.targets) & set(EXPERT_TARGETS):
            raise PrgeError("--routing masks LoRA on dense weights only, not on a mixture's experts "
                            "(ffn_*_exps): leave it off or target other weights")
        if len(self._slots) < want or any(s.share != per for s in self._slots[:want]):
            self._free_slots()  # a routed context is sized for its share
            threads = max(1, self._threads // want)
            try:
                while len(self._slots) < want:
                    timings: Counter[str] = Counter()
                    self._slots.append(_Slot(self._new_context(threads, timings, per), per, timings=timings))
            except PrgeError as exc:
                made = len(self._slots)
                self._free_slots()
                raise PrgeError(f"context {made + 1} of --parallel {want}: {exc}") from None
            self._workers = ThreadPoolExecutor(want, thread_name_prefix="prge-slot")
        slots = self._slots[:want]
        stale = [s for s in slots if not s.residents or s.residents[0].layout != layout(adapter)]
        fresh: list[ResidentAdapter] = []
        try:
            for slot in stale:
                slot.free_residents()
                scratch = Path(self._tmp.name)
                fresh += [ResidentAdapter.load(self._model, adapter, scratch) for _ in range(per)]
            locate_tensors(self._model, fresh)
        except PrgeError:
            for resident in fresh:
                resident.free()
            raise
        for i, slot in enumerate(stale):
            slot.residents = fresh[i * per:(i + 1) * per]
            if per == 1:
                slot.context.set_adapters([slot.residents[0].handle], [1.0])
            else:
                slot.context.route([r.handle for r in slot.residents])
        return slots

    def _free_slots(self) -> None:
        # Each handle is taken out before it is freed, so that no path frees one twice.
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.shutdown()
        slots, self._slots = self._slots, []
        for slot in slots:
            slot.context.free()
            for resident in slot.residents:
                resident.free()

    def _free_contexts(self) -> None:
        self._free_slots()
        main, self._main = self._main, None
        if main is not None:
            main.free()
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

    # -- adapters of the main context ---------------------------------------------------------
    def _load_adapter(self, adapter: LoraAdapter) -> ll.llama_adapter_lora_p:
        handle = self._adapters.get(adapter.uid)
        if handle is not None:
            self._adapters.move_to_end(adapter.uid)
            return handle
        handle = load_adapter(self._model, adapter, Path(self._tmp.name))
        self._adapters[adapter.uid] = handle
        return handle

    def _set_adapters(self, adapters: AdapterSet) -> LlamaContext:
        """The main context, with `adapters` set on it."""
        context = self._context()
        wanted = tuple((a.uid, float(s)) for a, s in adapters)
        if wanted == self._active:
            return context
        t0 = time.perf_counter()
        context.set_adapters([self._load_adapter(a) for a, _ in adapters], [s for _, s in wanted])
        self._active = wanted
        self._evict({uid for uid, _ in wanted})
        self.timings["adapter"] += time.perf_counter() - t0
        return context

    def _evict(self, keep: set[int]) -> None:
        while len(self._adapters) > self._cache_size:
            uid = next((u for u in self._adapters if u not in keep), None)
            if uid is None:
                return
            ll.llama_adapter_lora_free(self._adapters.pop(uid))

    # -- scoring ------------------------------------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest], adapters: AdapterSet) -> list[list[np.ndarray]]:
        """Log-probs of each request's candidates at its positions (see `Engine.score`)."""
        return self._set_adapters(adapters).score(requests)

    def score_each(self, requests: Sequence[ScoreRequest],
                   adapters: Sequence[LoraAdapter]) -> list[list[list[np.ndarray]]]:
        """`score(requests, [(a, 1.0)])` for each adapter, bit for bit, on up to `parallel`
        contexts at once (llama.cpp applies one adapter set per context). Adapter k goes to
        context k mod K."""
        if not adapters:
            return []
        if len({layout(a) for a in adapters}) > 1:  # not a step's perturbations: no resident fits all
            return [self.score(requests, [(a, 1.0)]) for a in adapters]
        slots = self._slots_for(len(adapters), adapters[0])
        k = len(slots)
        jobs = [self._workers.submit(slot.score_each, requests, adapters[i::k])
                for i, slot in enumerate(slots)]
        wait(jobs)  # every context idle again before anything is raised or freed
        for slot in slots:
            self.timings.update(slot.timings)
            slot.timings.clear()
        parts = [job.result() for job in jobs]
        return [parts[i % k][i // k] for i in range(len(adapters))]

    def generate(self, prompt: list[int], adapters: AdapterSet, max_tokens: int) -> list[int]:
        """Greedy continuation of `prompt` (up to `max_tokens`, stopping at end-of-generation)."""
        if len(prompt) + max_tokens > self.n_ctx:
            raise PrgeError(f"prompt ({len(prompt)} tokens) + --max-tokens {max_tokens} exceed the "
                            f"context of {self.n_ctx} tokens (raise --n-ctx)")
        context = self._set_adapters(adapters)
        n = len(prompt)
        context.run(np.array(prompt), np.arange(n), np.zeros(n), np.arange(n) == n - 1, clear=True)
        out: list[int] = []
        while len(out) < max_tokens:
            token = int(np.argmax(context.last_logits()))
            if ll.llama_vocab_is_eog(self._vocab, token):
                break
            out.append(token)
            context.run(np.array([token]), np.array([n + len(out) - 1]), np.zeros(1), np.ones(1), clear=False)
        return out

    def detokenize(self, tokens: list[int]) -> str:
        """Text of `tokens` (control tokens left out)."""
        return b"".join(self._piece(t, special=False) for t in tokens).decode("utf-8", errors="replace")

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Free contexts (before the model), adapters, model; stop the worker threads. A Ctrl-C
        meanwhile is raised once all is freed, so that __del__ never meets a half-freed engine
        (freeing the model twice crashes the process)."""
        with sigint_held():
            self._free_contexts()
            handles = list(self._adapters.values())
            self._adapters.clear()
            for handle in handles:
                ll.llama_adapter_lora_free(handle)
            model, self._model = self._model, None
            if model:
                ll.llama_model_free(model)
            self._pool.shutdown()
            self._tmp.cleanup()

    def __enter__(self) -> LlamaEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_model", None) is not None:  # not closed yet
            self.close()
