"""Merge a LoRA adapter into its base model: a new GGUF that needs no adapter.

Each targeted weight is dequantized, W + (alpha/r) B A is added in float32, and
the result is quantized again to `out_type`: Q8_0 by default, since re-quantizing
to 4 bits adds more error than a LoRA update is worth (measured: SmolLM2 Q4_1,
KL to base+adapter 0.07-0.09 nats at Q4_1, 0.003-0.016 at Q8_0, 0.002-0.007 at
F16, against an adapter effect of 0.04-0.06; docs/design.md, Decisions). "base" keeps each
tensor's own type where the `gguf` package can write it. Everything else is
copied byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.quants import QuantError, dequantize, quantize

from prge_gguf.errors import PrgeError
from prge_gguf.lora import LoraAdapter, atomic_gguf_writer

_SKIP_KEYS = ("GGUF.", "general.architecture")


def _requantize(weights: np.ndarray, base_type: GGMLQuantizationType,
                fallback: GGMLQuantizationType) -> tuple[np.ndarray, GGMLQuantizationType]:
    for qtype in (base_type, fallback):
        try:
            return quantize(weights, qtype), qtype
        except (QuantError, NotImplementedError):
            continue
    raise PrgeError(f"cannot quantize to {base_type.name} or {fallback.name}")


def merge(base_path: str | Path, adapter: LoraAdapter, out_path: str | Path,
          out_type: str = "Q8_0") -> dict[str, str]:
    """Write base + adapter to `out_path` (atomically); returns {tensor: type written} for the
    merged tensors: `out_type` (e.g. "Q8_0", "F16") or "base" (each tensor's own type)."""
    try:
        forced = None if out_type == "base" else GGMLQuantizationType[out_type]
    except KeyError:
        raise PrgeError(f"--type: unknown tensor type '{out_type}' (e.g. Q8_0, F16, Q4_0, base)") from None
    reader = GGUFReader(base_path)
    written: dict[str, str] = {}
    with atomic_gguf_writer(out_path, adapter.architecture) as writer:
        for field in reader.fields.values():
            if field.name.startswith(_SKIP_KEYS):
                continue
            vtype = GGUFValueType(field.types[0])
            sub = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
        scale = np.float32(adapter.alpha / adapter.rank)
        missing = set(adapter.names)
        for t in reader.tensors:
            if t.name not in adapter.b:
                writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
                continue
            missing.discard(t.name)
            weights = dequantize(t.data, t.tensor_type).astype(np.float32)
            weights += scale * (adapter.b[t.name] @ adapter.a[t.name])
            data, qtype = _requantize(weights, forced or t.tensor_type, forced or GGMLQuantizationType.Q8_0)
            writer.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=qtype)
            written[t.name] = qtype.name
        if missing:
            raise PrgeError(f"{base_path}: has no tensor {sorted(missing)[0]} that the adapter targets")
    return written
