"""Every llama.cpp file type users bring (K-quants, IQ4_XS, legacy quants, BF16, F16) trains,
reloads in llama-cpp-python's `Llama(lora_path=...)` with the training engine's log-probs, and
merges: a tiny random-weight llama, quantized by llama.cpp itself, with rows wide enough (256)
that every tensor gets the type asked for."""

from __future__ import annotations

import numpy as np
import pytest
from test_architectures import boosted, cli, engine_logprobs, llama_cpp_python_logprobs

from prge_gguf.gguf_header import read_header
from prge_gguf.lora import read_gguf, write_gguf
from prge_gguf.synthetic import TINY_K, write_tiny
from prge_gguf.targets import TARGETS

pytestmark = pytest.mark.slow

# File type -> the tensor type its attention q weight gets (llama-quantize's choice for the mix).
TYPES = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K", "IQ4_XS": "IQ4_XS", "Q8_0": "Q8_0",
         "Q4_0": "Q4_0", "BF16": "BF16", "F16": "F16"}
TEXT = "It was a great movie and the plot is not bad."


@pytest.mark.parametrize("ftype", list(TYPES))
def test_quant_type_trains_reloads_and_merges(tmp_path, ftype):
    from prge_gguf.engine.llama import LlamaEngine

    model = write_tiny(tmp_path / f"llama-{ftype}.gguf", "llama", ftype, shape=TINY_K)
    assert read_header(model).tensors["blk.0.attn_q.weight"].type_name == TYPES[ftype]
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "a great movie", "label": 1}\n{"text": "a terrible film", "label": 0}\n')
    code, _, err = cli("train", "--model", model, "--data", data, "--label-words", "0=bad,1=good",
                       "--steps", "2", "--batch-size", "2", "--eval-every", "0", "--threads", "1",
                       "--targets", ",".join(TARGETS), "--out", tmp_path / "run")
    assert code == 0, err
    adapter = tmp_path / "strong.gguf"
    write_gguf(boosted(read_gguf(tmp_path / "run" / "adapter.gguf")), adapter)
    merged = tmp_path / "merged.gguf"
    code, _, err = cli("export", adapter, "--model", model, "--to", "merged", "--type", "F16",
                       "--out", merged)
    assert code == 0, err
    with LlamaEngine(model, n_ctx=128, threads=1) as engine:
        tokens = engine.tokenize(TEXT, add_special=True)
        base = engine_logprobs(engine, tokens, None)
        ours = engine_logprobs(engine, tokens, read_gguf(adapter))
    np.testing.assert_allclose(llama_cpp_python_logprobs(model, adapter, tokens), ours, atol=1e-5)
    with LlamaEngine(merged, n_ctx=128, threads=1) as m:
        got = engine_logprobs(m, tokens, None)
    # The merged weights are the base's dequantized, plus the update, in F16: as base + adapter,
    # up to the base's own quantization of activations (Q8 dot products) and F16 rounding.
    assert np.abs(got - ours).max() < 0.1 * np.abs(ours - base).max()

