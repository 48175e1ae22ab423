"""Benchmark presets written directly as random quantized blocks (Q4_0, Q4_K_M): the tensor types
llama-quantize would pick, values that decode to small finite numbers, and a file llama.cpp loads
and computes finite logits with."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

from prge_gguf.synthetic import quantize, write_synthetic

pytestmark = pytest.mark.slow  # each file copies SmolLM2's 49152-token vocabulary: seconds

PRESET = "llama-tiny-k"  # 8 blocks of 256: Q4_K_M gives some of them Q6_K


def _types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


@pytest.fixture(scope="module")
def q4_k_m(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("direct") / "q4_k_m.gguf", PRESET, "Q4_K_M")


def test_direct_q4_k_m_has_llama_quantize_types(q4_k_m, tmp_path):
    f16 = write_synthetic(tmp_path / "f16.gguf", PRESET, "F16")
    reference = quantize(f16, tmp_path / "ref.gguf", "Q4_K_M", threads=1)
    assert _types(q4_k_m) == _types(reference)
    assert {"Q4_K", "Q6_K"} <= set(_types(q4_k_m).values())
    field = gguf.GGUFReader(q4_k_m).fields["general.file_type"]
    assert field.contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q4_0"])
def test_direct_blocks_decode_to_small_finite_values(q4_k_m, tmp_path, ftype):
    path = q4_k_m if ftype == "Q4_K_M" else write_synthetic(tmp_path / "q4_0.gguf", PRESET, "Q4_0")
    for t in gguf.GGUFReader(path).tensors:
        if t.tensor_type.name in ("F32", "F16"):
            continue
        values = dequantize(t.data, t.tensor_type)
        assert np.isfinite(values).all(), t.name
        # The F16 weights' spread: standard deviation 0.02, mean ~0 (Q4_0's -0.002: its q - 8
        # averages -0.5).
        assert abs(values.std() - 0.02) < 0.002 and abs(values.mean()) < 0.003, t.name


def test_direct_q4_k_m_loads_and_computes_finite_logits(q4_k_m):
    from llama_cpp import Llama

    import prge_gguf.engine.llama  # noqa: F401  (its errors-only log callback)

    llm = Llama(model_path=str(q4_k_m), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    tokens = llm.tokenize(b"It was a great movie")
    llm.eval(tokens)
    logits = np.asarray(llm.scores[:len(tokens)])
    assert np.isfinite(logits).all() and logits.std() > 0
    llm.close()
