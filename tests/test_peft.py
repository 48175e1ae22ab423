"""GGUF adapter <-> PEFT folder: exact round trip, and the same numbers in transformers + PEFT."""

import json

import numpy as np
import pytest

from converters.peft import from_peft, to_peft
from prge_gguf.cli import main
from prge_gguf.errors import PrgeError
from prge_gguf.hf_names import peft_unnamed, rope_rows_to_gguf, rope_rows_to_hf
from prge_gguf.lora import LoraAdapter, init_lora_fa, read_gguf, write_gguf
from prge_gguf.targets import TARGETS


def _trained(header, seed=0, scale=0.05):
    adapter = init_lora_fa(header, list(TARGETS), 8, 16, seed=seed)
    rng = np.random.default_rng(seed)
    return adapter.with_b({n: (scale * rng.standard_normal(b.shape)).astype(np.float32)
                           for n, b in adapter.b.items()})


@pytest.fixture(scope="module")
def header(model_path):
    from prge_gguf.gguf_header import read_header

    return read_header(model_path)


def test_rope_row_orders_are_inverse():
    rows = np.arange(3 * 64 * 2, dtype=np.float32).reshape(3 * 64, 2)
    gguf = rope_rows_to_gguf(rows, 3)
    assert not np.array_equal(gguf, rows)
    np.testing.assert_array_equal(rope_rows_to_hf(gguf, 3), rows)
    # Per head, llama.cpp's order interleaves the two halves: HF row 0, 32, 1, 33, ...
    np.testing.assert_array_equal(gguf[:4, 0], rows[[0, 32, 1, 33], 0])


def test_gguf_peft_gguf_round_trip_is_exact(header, tmp_path, capsys):
    adapter = _trained(header)
    src = tmp_path / "adapter.gguf"
    write_gguf(adapter, src)
    assert main(["export", str(src), "--to", "peft", "--out", str(tmp_path / "peft")]) == 0
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16.0 and config["peft_type"] == "LORA"
    assert config["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                        "up_proj", "v_proj"]
    assert main(["export", str(tmp_path / "peft"), "--to", "gguf", "--out", str(tmp_path / "back.gguf")]) == 0
    back = read_gguf(tmp_path / "back.gguf")
    assert back.names == adapter.names and back.alpha == adapter.alpha
    assert back.fingerprint == adapter.fingerprint
    for n in adapter.names:
        np.testing.assert_array_equal(back.a[n], adapter.a[n])
        np.testing.assert_array_equal(back.b[n], adapter.b[n])
    # q/k rows really were reordered on the way out (the PEFT file is not a renamed copy).
    peft = from_peft(tmp_path / "peft")
    assert np.array_equal(peft.b["blk.0.attn_q.weight"], adapter.b["blk.0.attn_q.weight"])
    from safetensors.numpy import load_file

    raw = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    hf_q = raw["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert not np.array_equal(hf_q, adapter.b["blk.0.attn_q.weight"])
    np.testing.assert_array_equal(raw["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"],
                                  adapter.b["blk.0.attn_v.weight"])


TEXTS = ["a gorgeous, witty, seductive movie. It was", "The capital of France is",
         "the plot is nothing but boilerplate. It was"]
# KL(transformers fp32 || llama.cpp) of the next-token distribution. llama.cpp quantizes
# activations to 8 bits in its quantized matmuls, so even the bare model differs.
# Measured (SmolLM2-135M Q4_1, this 2-core AVX2 machine, 2026-11-25): bare 0.0019-0.0030
# nats; with the adapters below 0.0020-0.0094, while they move the model by 0.14-1.77.
KL_BOUND = 0.02


def _kl(p_log, q_log):
    return float((np.exp(p_log) * (p_log - q_log)).sum())


@pytest.fixture(scope="module")
def hf_model(model_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_path.parent), gguf_file=model_path.name,
                                                dtype=torch.float32).eval()


def _next_token_logprobs(engine, hf, text, adapter):
    import torch

    from prge_gguf.engine import ScoreRequest

    toks = engine.tokenize(text, add_special=True)
    ours = engine.score([ScoreRequest(tuple(toks), (len(toks) - 1,), (tuple(range(engine.n_vocab)),))],
                        [(adapter, 1.0)] if adapter else [])[0][0].astype(np.float64)
    with torch.no_grad():
        logits = hf(torch.tensor([toks])).logits[0, -1].double()
    return ours, (logits - torch.logsumexp(logits, -1)).numpy()


def test_tensors_without_a_peft_module_are_named_and_refused(tmp_path):
    # The embedding (and norms) have no Hugging Face module PEFT names.
    names = ["blk.0.attn_q.weight", "output_norm.weight", "token_embd.weight"]
    adapter = LoraAdapter("llama", 16.0, {n: np.zeros((2, 4), np.float32) for n in names},
                          {n: np.zeros((4, 2), np.float32) for n in names})
    assert peft_unnamed(adapter) == ["output_norm.weight", "token_embd.weight"]
    with pytest.raises(PrgeError, match=r"^output_norm\.weight: no PEFT module for this tensor"):
        to_peft(adapter, tmp_path / "out", n_head=2, n_head_kv=2)
    assert not (tmp_path / "out").exists()
    only_q = LoraAdapter("llama", 16.0, {names[0]: adapter.a[names[0]]}, {names[0]: adapter.b[names[0]]})
    assert peft_unnamed(only_q) == []


@pytest.mark.slow
def test_peft_folder_reproduces_llama_cpp_in_transformers(engine, hf_model, tmp_path):
    from peft import PeftModel

    import prge_gguf.hf_names as names

    # q/k alone move the output less: a larger B there (where the row order matters); the last
    # two blocks alone (--num-layers 2) still more.
    for targets, num_layers, scale in ((list(TARGETS), 0, 0.1), (["attn_q", "attn_k"], 0, 0.4),
                                       (["attn_q", "attn_v"], 2, 3.0)):
        adapter = init_lora_fa(engine.header, targets, 8, 16, seed=1, num_layers=num_layers)
        rng = np.random.default_rng(1)
        adapter = adapter.with_b({n: (scale * rng.standard_normal(b.shape)).astype(np.float32)
                                  for n, b in adapter.b.items()})
        folder = to_peft(adapter, tmp_path / f"{'-'.join(targets)}-{num_layers}", n_head=9, n_head_kv=3)
        model = PeftModel.from_pretrained(hf_model, str(folder))
        for text in TEXTS:
            with model.disable_adapter():
                base_ours, base_hf = _next_token_logprobs(engine, model, text, None)
            ours, theirs = _next_token_logprobs(engine, model, text, adapter)
            assert _kl(base_hf, base_ours) < KL_BOUND
            assert _kl(theirs, base_hf) > 5 * KL_BOUND  # the adapter changes the model a lot...
            assert _kl(theirs, ours) < KL_BOUND  # ...and the same way in both engines
        model.unload()

    # Control: exporting q/k rows without undoing llama.cpp's RoPE order breaks the match.
    wrong = tmp_path / "unpermuted"
    real = names.rope_rows_to_hf
    try:
        names.rope_rows_to_hf = lambda rows, n_head: rows
        to_peft(adapter, wrong, n_head=9, n_head_kv=3)
    finally:
        names.rope_rows_to_hf = real
    model = PeftModel.from_pretrained(hf_model, str(wrong))
    ours, theirs = _next_token_logprobs(engine, model, TEXTS[0], adapter)
    assert _kl(theirs, ours) > 5 * KL_BOUND
    model.unload()


def test_peft_folder_missing_a_lora_b_is_a_clear_error(header, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    folder = to_peft(_trained(header), tmp_path / "peft", n_head=9, n_head_kv=3)
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    del tensors["base_model.model.model.layers.3.mlp.up_proj.lora_B.weight"]
    save_file(tensors, str(weights))
    out = tmp_path / "back.gguf"
    assert main(["export", str(folder), "--to", "gguf", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {weights}: blk.3.ffn_up.weight has only one of lora_A/lora_B")
    assert not out.exists()
