"""An adapter merged into the base GGUF: loads in llama.cpp without an adapter, same outputs."""

import numpy as np
import pytest

from prge_gguf.cli import main
from prge_gguf.engine import ScoreRequest
from prge_gguf.engine.llama import LlamaEngine
from prge_gguf.gguf_header import read_header
from prge_gguf.lora import init_lora_fa, write_gguf
from prge_gguf.targets import TARGETS

pytestmark = pytest.mark.slow
TEXTS = ["a gorgeous, witty, seductive movie. It was", "The capital of France is",
         "the plot is nothing but boilerplate. It was"]


def _logprobs(engine, text, adapters):
    toks = engine.tokenize(text, add_special=True)
    everything = tuple(range(engine.n_vocab))
    return engine.score([ScoreRequest(tuple(toks), (len(toks) - 1,), (everything,))],
                        adapters)[0][0].astype(np.float64)


def _kl(p, q):
    return float((np.exp(p) * (p - q)).sum())


def test_merged_gguf_matches_base_plus_adapter(engine, tmp_path, capsys):
    adapter = init_lora_fa(engine.header, list(TARGETS), 8, 16, seed=3)
    rng = np.random.default_rng(3)
    adapter = adapter.with_b({n: (0.1 * rng.standard_normal(b.shape)).astype(np.float32)
                              for n, b in adapter.b.items()})
    path = tmp_path / "adapter.gguf"
    write_gguf(adapter, path)
    # Re-quantization error relative to the adapter's own effect (KL base+adapter -> base):
    # measured 2026-11-25 at scale 0.05: Q8_0 0.05-0.39x, F16 0.04-0.18x.
    for qtype, ratio in (("Q8_0", 0.5), ("F16", 0.3)):
        merged = tmp_path / f"merged-{qtype}.gguf"
        assert main(["export", str(path), "--to", "merged", "--type", qtype, "--out", str(merged)]) == 0
        header = read_header(merged)
        assert header.tensors["blk.0.attn_q.weight"].type_name == qtype
        assert header.tensors["blk.0.attn_norm.weight"].type_name == "F32"  # untouched tensors copied
        assert header.metadata["tokenizer.chat_template"] == engine.header.metadata["tokenizer.chat_template"]
        with LlamaEngine(merged, threads=2) as m:
            for text in TEXTS:
                target = _logprobs(engine, text, [(adapter, 1.0)])
                effect = _kl(target, _logprobs(engine, text, []))
                assert _kl(target, _logprobs(m, text, [])) < ratio * effect
    assert "wrote" in capsys.readouterr().out
