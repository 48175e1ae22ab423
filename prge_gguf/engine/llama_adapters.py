"""LoRA adapters inside llama.cpp: loading them from `LoraAdapter`s, and keeping one loaded while
its tensors are overwritten with each new adapter's values.

llama.cpp loads an adapter only from a GGUF file and offers no call to change a loaded one. A
P-RGE step scores 2q fresh adapters that differ only in their values, so a `ResidentAdapter` is
loaded once, and each new adapter's A and B are copied into its tensors with ggml's public
`ggml_backend_tensor_set` (on a GPU, a host-to-device copy): no file, no load, and, the adapter
set of its context never changing, no scheduler re-reservation.

Where those tensors are: llama.h keeps an adapter's internals private, but a graph lists every
tensor it reads. `locate_tensors` decodes one token with the adapter set, in a scratch context
whose eval callback (llama.h's `cb_eval`) is shown every node; the adapter's tensors are the
sources named `<weight>.lora_a` / `.lora_b`, checked against the expected types and shapes.
"""

from __future__ import annotations

import ctypes
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


# libggml-base sits beside libllama, which llama_cpp loaded from there already.
_ggml = load_shared_library("ggml-base", ll._base_path)
_tensor_set = _ggml.ggml_backend_tensor_set
_tensor_set.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
_tensor_set.restype = None


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
    """An adapter loaded once into llama.cpp; `write` gives its tensors another adapter's values."""

    handle: ll.llama_adapter_lora_p
    layout: tuple
    _a: dict[str, np.ndarray]  # the A tensors it holds: LoRA-FA's steps share them, unwritten
    _tensors: dict[str, int] = field(default_factory=dict)  # "<weight>.lora_a" -> ggml_tensor *

    @classmethod
    def load(cls, model: ll.llama_model_p, adapter: LoraAdapter, scratch: Path) -> ResidentAdapter:
        """Load `adapter` (its tensors found later, by `locate_tensors`)."""
        return cls(load_adapter(model, adapter, scratch), layout(adapter), adapter.a)

    def write(self, adapter: LoraAdapter) -> None:
        """Overwrite the loaded tensors with `adapter`'s (of the same layout): B always, A where
        the adapter's A is not the one held. Call it only between its context's decodes."""
        if adapter.a is not self._a:
            for name in adapter.names:
                self._set(f"{name}.lora_a", adapter.a[name])
            self._a = adapter.a
        for name in adapter.names:
            self._set(f"{name}.lora_b", adapter.b[name])

    def _set(self, tensor: str, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=np.float32)
        _tensor_set(self._tensors[tensor], data.ctypes.data, 0, data.nbytes)

    def free(self) -> None:
        """Free the adapter (after every context using it has dropped it or been freed)."""
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
            resident._tensors = _checked(found, resident.layout)
    finally:
        ll.llama_free(ctx)


def _checked(found: dict[str, int], adapter_layout: tuple) -> dict[str, int]:
    """The tensors of `adapter_layout`, each float32 and contiguous of the expected shape; a
    PrgeError naming every one that is missing or unlike."""
    problems, tensors = [], {}
    for name, a_shape, b_shape in adapter_layout[2]:
        for kind, shape in (("lora_a", a_shape), ("lora_b", b_shape)):
            key = f"{name}.{kind}"
            ptr = found.get(key)
            if ptr is None:
                problems.append(f"{key} not in the graph")
                continue
            t = ctypes.cast(ptr, ctypes.POINTER(_GgmlTensor)).contents
            # ggml lists dimensions innermost first: numpy (rows, cols) is ne = (cols, rows).
            if (t.type, t.ne[0], t.ne[1], t.nb[1]) != (_GGML_TYPE_F32, shape[1], shape[0], 4 * shape[1]):
                problems.append(f"{key} is type {t.type} of {t.ne[0]} x {t.ne[1]}, expected "
                                f"float32 {shape[1]} x {shape[0]}")
            tensors[key] = ptr
    if problems:
        raise PrgeError("cannot overwrite the loaded adapter in place: " + "; ".join(problems[:5])
                        + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    return tensors
