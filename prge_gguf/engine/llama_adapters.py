"""LoRA adapters inside llama.cpp: loading them from `LoraAdapter`s, and keeping one loaded while
its tensors are overwritten with each new adapter's values.

llama.cpp loads an adapter only from a GGUF file and offers no call to change a loaded one. A
P-RGE step scores 2q fresh adapters that differ only in their values, so a `ResidentAdapter` is
loaded once, and each new adapter's values are copied into its tensors with ggml's public API
(on a GPU, a host-to-device copy): no file, no load, and, the adapter set of its context never
changing, no scheduler re-reservation. The copy is one `ggml_backend_tensor_set` per backend
buffer: the adapter's tensors lie together in the buffer llama.cpp allocated for them, so a host
image of that span (A and B at their offsets) goes over at once through a 1-D tensor placed on
the span with `ggml_backend_tensor_alloc`. One call, not one per tensor (two for each adapted
weight), matters when several contexts write at once: each call takes the GIL back and, on a
GPU, synchronises a stream.

Where those tensors are: llama.h keeps an adapter's internals private, but a graph lists every
tensor it reads. `locate_tensors` decodes one token with the adapter set, in a scratch context
whose eval callback (llama.h's `cb_eval`) is shown every node; the adapter's tensors are the
sources named `<weight>.lora_a` / `.lora_b`, checked against the expected types and shapes.
"""

from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp.llama_cpp as ll
import numpy as np
from llama_cpp._ctypes_extensions import load_shared_library

from prge_gguf.engine.llama_context import context_params, new_context
from prge_gguf.errors import PrgeError
from prge_gguf.lora import LoraAdapter, write_gguf

_GGML_TYPE_F32 = 0
# Tokens of the scratch context that locates tensors: it decodes one.
_LOCATE_N_CTX = 8


class _GgmlTensor(ctypes.Structure):
    """The head of ggml.h's `struct ggml_tensor` (public, fixed layout), up to its name."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
    ]


class _GgmlInitParams(ctypes.Structure):
    """ggml.h's `struct ggml_init_params`."""

    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _bind(name: str, argtypes: list, restype: object) -> ctypes._CFuncPtr:
    fn = getattr(_ggml, name)
    fn.argtypes, fn.restype = argtypes, restype
    return fn


# libggml-base sits beside libllama, which llama_cpp loaded from there already.
_ggml = load_shared_library("ggml-base", ll._base_path)
_tensor_set = _bind("ggml_backend_tensor_set", [ctypes.c_void_p] * 2 + [ctypes.c_size_t] * 2, None)
_tensor_overhead = _bind("ggml_tensor_overhead", [], ctypes.c_size_t)
_ggml_init = _bind("ggml_init", [_GgmlInitParams], ctypes.c_void_p)
_ggml_free = _bind("ggml_free", [ctypes.c_void_p], None)
_new_tensor_1d = _bind("ggml_new_tensor_1d", [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64], ctypes.c_void_p)
_tensor_alloc = _bind("ggml_backend_tensor_alloc", [ctypes.c_void_p] * 3, ctypes.c_int)


@dataclass
class _Span:
    """A run of one backend buffer holding adapter tensors, with its host image: `tensor` is the
    float32 1-D tensor placed on it; `slots[name]` the image's slice of tensor `name`."""

    tensor: int
    image: np.ndarray
    slots: dict[str, np.ndarray]


def load_adapter(model: ll.llama_model_p, adapter: LoraAdapter, scratch: Path) -> ll.llama_adapter_lora_p:
    """`adapter` loaded into llama.cpp through a temporary GGUF file in `scratch`."""
    path = scratch / f"adapter-{adapter.uid}.gguf"
    write_gguf(adapter, path)
    handle = ll.llama_adapter_lora_init(model, str(path).encode())
    path.unlink()
    if not handle:
        raise PrgeError("llama.cpp refused the adapter (its tensors do not match this model's shapes)")
    return handle


def layout(adapter: LoraAdapter) -> tuple:
    """What a loaded adapter fixes: architecture, alpha (llama.cpp reads the scale from it at
    load) and tensor names and shapes. Adapters of one layout fit one `ResidentAdapter`."""
    shapes = tuple((n, adapter.a[n].shape, adapter.b[n].shape) for n in adapter.names)
    return adapter.architecture, adapter.alpha, shapes


@dataclass
class ResidentAdapter:
    """An adapter loaded once into llama.cpp; `write` gives its tensors another adapter's values.
    `locate_tensors` must have found its tensors first."""

    handle: ll.llama_adapter_lora_p
    layout: tuple
    _a: dict[str, np.ndarray]  # the A tensors it holds: LoRA-FA's steps share them, unwritten
    _loaded: LoraAdapter | None  # the values it was loaded with: the first host image
    _ctx: int | None = None  # the ggml context of the span tensors
    _spans: list[_Span] = field(default_factory=list)

    @classmethod
    def load(cls, model: ll.llama_model_p, adapter: LoraAdapter, scratch: Path) -> ResidentAdapter:
        """Load `adapter` (its tensors found later, by `locate_tensors`)."""
        return cls(load_adapter(model, adapter, scratch), layout(adapter), adapter.a, adapter)

    def write(self, adapter: LoraAdapter) -> None:
        """Overwrite the loaded tensors with `adapter`'s (of the same layout): B always, A where
        the adapter's A is not the one held. Call it only between its context's decodes."""
        for span in self._spans:
            for name in adapter.names:
                if adapter.a is not self._a and f"{name}.lora_a" in span.slots:
                    span.slots[f"{name}.lora_a"][...] = adapter.a[name]
                if f"{name}.lora_b" in span.slots:
                    span.slots[f"{name}.lora_b"][...] = adapter.b[name]
            _tensor_set(span.tensor, span.image.ctypes.data, 0, span.image.nbytes)
        self._a = adapter.a

    def _place(self, tensors: dict[str, int]) -> None:
        """Spans over `tensors` (name -> ggml_tensor *), one a backend buffer, with host images
        of the loaded values."""
        shapes = _shapes(self.layout)
        by_buffer: dict[int, dict[str, _GgmlTensor]] = {}
        for name, ptr in tensors.items():
            t = ctypes.cast(ptr, ctypes.POINTER(_GgmlTensor)).contents
            by_buffer.setdefault(t.buffer, {})[name] = t
        self._ctx = _ggml_init(_GgmlInitParams(_tensor_overhead() * len(by_buffer), None, True))
        for buffer, members in by_buffer.items():
            start = min(t.data for t in members.values())
            end = max(t.data + 4 * math.prod(shapes[name]) for name, t in members.items())
            span = _new_tensor_1d(self._ctx, _GGML_TYPE_F32, (end - start) // 4)
            if _tensor_alloc(buffer, span, start) != 0:
                raise PrgeError("ggml could not place a tensor on the loaded adapter's buffer")
            image = np.zeros((end - start) // 4, np.float32)
            slots = {}
            for name, t in members.items():
                offset = (t.data - start) // 4
                slots[name] = image[offset:offset + math.prod(shapes[name])].reshape(shapes[name])
                weight, kind = name.rsplit(".", 1)
                slots[name][...] = (self._loaded.a if kind == "lora_a" else self._loaded.b)[weight]
            self._spans.append(_Span(span, image, slots))
        self._loaded = None  # the images hold its values now

    def free(self) -> None:
        """Free the adapter (after every context using it has dropped it or been freed)."""
        if self._ctx is not None:
            _ggml_free(self._ctx)
        ll.llama_adapter_lora_free(self.handle)


def locate_tensors(model: ll.llama_model_p, residents: list[ResidentAdapter]) -> None:
    """Find each resident adapter's tensors in llama.cpp: the graph of a one-token decode with
    the adapter set lists them as sources (see the module docstring)."""
    found: dict[str, int] = {}

    @ll.ggml_backend_sched_eval_callback
    def watch(node: int, ask: bool, _user: ctypes.c_void_p) -> bool:
        for src in ctypes.cast(node, ctypes.POINTER(_GgmlTensor)).contents.src:
            if src:
                name = ctypes.cast(src, ctypes.POINTER(_GgmlTensor)).contents.name.decode(errors="replace")
                if name.endswith((".lora_a", ".lora_b")):
                    found[name] = src
        return False  # observe nothing: the graph computes as one piece

    cparams = context_params(_LOCATE_N_CTX, 1, os.cpu_count() or 1)
    cparams.cb_eval = watch
    ctx = new_context(model, cparams)
    try:
        token = (ll.llama_token * 1)(0)
        for resident in residents:
            found.clear()
            handle = (ll.llama_adapter_lora_p_ctypes * 1)(resident.handle)
            ll.llama_set_adapters_lora(ctx, handle, 1, (ctypes.c_float * 1)(1.0))
            ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
            rc = ll.llama_decode(ctx, ll.llama_batch_get_one(token, 1))
            ll.llama_synchronize(ctx)
            if rc != 0:
                raise PrgeError(f"llama_decode failed (code {rc}) while locating the adapter's tensors")
            resident._place(_checked(found, resident.layout))
    finally:
        ll.llama_free(ctx)


def _shapes(adapter_layout: tuple) -> dict[str, tuple[int, ...]]:
    """`<weight>.lora_a` / `.lora_b` -> numpy shape, of an adapter layout (`layout`)."""
    return {f"{name}.{kind}": shape for name, a_shape, b_shape in adapter_layout[2]
            for kind, shape in (("lora_a", a_shape), ("lora_b", b_shape))}


def _checked(found: dict[str, int], adapter_layout: tuple) -> dict[str, int]:
    """The tensors of `adapter_layout`, each float32 and contiguous of the expected shape; a
    PrgeError naming every one that is missing or unlike."""
    problems, tensors = [], {}
    for key, shape in _shapes(adapter_layout).items():
        ptr = found.get(key)
        if ptr is None:
            problems.append(f"{key} not in the graph")
            continue
        t = ctypes.cast(ptr, ctypes.POINTER(_GgmlTensor)).contents
        # ggml lists dimensions innermost first: numpy (experts, rows, cols) is ne = (cols, rows,
        # experts, 1); contiguous float32 has strides 4, 4 cols, 4 cols rows, ...
        ne = tuple(reversed(shape)) + (1,) * (4 - len(shape))
        strides = tuple(4 * math.prod(ne[:k]) for k in range(4))
        if (t.type, tuple(t.ne), tuple(t.nb)) != (_GGML_TYPE_F32, ne, strides):
            problems.append(f"{key} is type {t.type} of {' x '.join(map(str, t.ne[:len(shape)]))}, "
                            f"expected float32 {' x '.join(map(str, ne[:len(shape)]))}")
        tensors[key] = ptr
    if problems:
        raise PrgeError("cannot overwrite the loaded adapter in place: " + "; ".join(problems[:5])
                        + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    return tensors
