"""Every architecture of prge_gguf.synthetic, on a tiny random-weight model made at test time:
`info` lists its targets, 3 training steps run, the adapter reloads in llama-cpp-python's own
`Llama(lora_path=...)` with the training engine's log-probs, the merged model loads and scores
like base + adapter, PEFT export round-trips where PEFT can name the modules (and says in one
line where it cannot), and the torch engine agrees where transformers loads the architecture.
Then bad input: one clear line, exit 2, nothing written.

Each check is its own test, `test_<check>[<kind>]`: scripts/bench/compat_table.py turns their
outcomes into the compatibility table.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from prge_gguf.cli import main
from prge_gguf.engine import ScoreRequest
from prge_gguf.errors import PrgeError
from prge_gguf.gguf_header import read_header
from prge_gguf.lora import LoraAdapter, read_gguf, write_gguf
from prge_gguf.synthetic import ARCHS, write_tiny
from prge_gguf.targets import TARGETS

pytestmark = pytest.mark.slow

KINDS = list(ARCHS)
# What `info` must list, in its order (TARGETS, then fused ones); the rest have all seven.
EXPECTED_TARGETS = {
    "phi3": ["attn_output", "ffn_up", "ffn_down", "attn_qkv"],
    "llama-fused-qkv": ["attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_qkv"],
    "qwen3moe": ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_exps", "ffn_up_exps",
                 "ffn_down_exps"],
}
# Kinds whose GGUF fuses q, k, v where the Hugging Face model does not: PEFT gets three LoRAs
# that share A.
SPLIT_QKV = {"llama-fused-qkv"}
# Kinds with targets no PEFT module names: Qwen3-MoE's experts are 3-D parameters in transformers.
NO_PEFT = {"qwen3moe": "ffn_gate_exps, ffn_up_exps, ffn_down_exps"}
TEXT = "It was a great movie and the plot is not bad."
ROWS = [("a great movie", 1), ("the plot is bad", 0), ("fun and good", 1), ("a terrible film", 0)] * 2


def targets_of(kind: str) -> list[str]:
    """The projections a tiny model of `kind` offers LoRA."""
    return EXPECTED_TARGETS.get(kind, list(TARGETS))


def cli(*argv: str | Path) -> tuple[int, str, str]:
    """Run `prge-gguf argv`; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder of tiny models, training data and runs, shared by this module's tests."""
    root = tmp_path_factory.mktemp("arch")
    (root / "train.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in ROWS))
    return root


def model(work: Path, kind: str) -> Path:
    """The tiny Q8_0 model of `kind`, written on first use."""
    path = work / f"{kind}.gguf"
    return path if path.is_file() else write_tiny(path, kind)


def run(work: Path, kind: str) -> tuple[Path, str]:
    """(run folder, stderr) of 3 training steps on every target of `kind`, trained on first use."""
    folder = work / f"run-{kind}"
    log = work / f"run-{kind}.stderr"
    if not log.is_file():
        code, _, err = cli("train", "--model", model(work, kind), "--data", work / "train.jsonl",
                           "--label-words", "0=bad,1=good", "--steps", "3", "--batch-size", "4",
                           "--eval-every", "0", "--threads", "1", "--targets", ",".join(targets_of(kind)),
                           "--out", folder)
        assert code == 0, err
        log.write_text(err)
    return folder, log.read_text()


def peft_part(adapter: LoraAdapter) -> LoraAdapter:
    """`adapter` without the tensors no PEFT module names (a mixture of experts' experts)."""
    from prge_gguf.hf_names import peft_unnamed

    keep = [n for n in adapter.names if n not in peft_unnamed(adapter)]
    return LoraAdapter(adapter.architecture, adapter.alpha, {n: adapter.a[n] for n in keep},
                       {n: adapter.b[n] for n in keep}, adapter.fingerprint)


def boosted(adapter: LoraAdapter, seed: int = 0) -> LoraAdapter:
    """`adapter` with random B (0.1 std): an effect on the log-probs far above float noise."""
    rng = np.random.default_rng(seed)
    return adapter.with_b({n: (0.1 * rng.standard_normal(b.shape)).astype(np.float32)
                           for n, b in adapter.b.items()})


def engine_logprobs(engine, tokens: list[int], adapter: LoraAdapter | None) -> np.ndarray:
    """Log-probs over the vocabulary at every position of `tokens`, from the training engine."""
    everything = tuple(range(engine.n_vocab))
    positions = tuple(range(len(tokens)))
    request = ScoreRequest(tuple(tokens), positions, (everything,) * len(positions))
    rows = engine.score([request], [(adapter, 1.0)] if adapter else [])[0]
    return np.stack(rows).astype(np.float64)


def llama_cpp_python_logprobs(model_path: Path, lora_path: Path, tokens: list[int]) -> np.ndarray:
    """The same log-probs from llama-cpp-python's high-level `Llama` with the adapter file."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), lora_path=str(lora_path), n_ctx=128, logits_all=True,
                n_threads=1, verbose=False)
    try:
        llm.eval(tokens)
        logits = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)
    finally:
        llm.close()
    peak = logits.max(axis=1, keepdims=True)
    return logits - peak - np.log(np.exp(logits - peak).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("kind", KINDS)
def test_info_lists_targets(work, kind):
    code, out, _ = cli("info", model(work, kind))
    assert code == 0
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("LoRA targets"))
    listed = [line.split()[0] for line in lines[start + 1:] if line.startswith("  ")]
    assert listed == targets_of(kind)
    assert f"architecture:  {ARCHS[kind].name} " in out
    split = " (attn_qkv as q_proj, k_proj, v_proj sharing one lora_A)" if kind in SPLIT_QKV else ""
    peft = f"not for {NO_PEFT[kind]} (no Hugging Face module: GGUF adapter only)" if kind in NO_PEFT \
        else "yes"
    assert f"PEFT export:   {peft}{split}\n" in out
    if ARCHS[kind].n_expert:
        assert "not trained:   ffn_gate_inp (no target names it)" in out


@pytest.mark.parametrize("kind", KINDS)
def test_train_three_steps(work, kind):
    folder, err = run(work, kind)
    adapter = read_gguf(folder / "adapter.gguf")
    assert adapter.architecture == ARCHS[kind].name
    assert adapter.targets == sorted(targets_of(kind))
    assert any(np.any(b != 0) for b in adapter.b.values())  # the steps moved B
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert max(m.get("step", 0) for m in metrics) == 3
    if ARCHS[kind].n_expert:
        assert ("note: the adapter covers attn_k, attn_output, attn_q, attn_v, ffn_down_exps, ffn_gate_exps, "
                "ffn_up_exps; not ffn_gate_inp") in err
    if kind in NO_PEFT:
        assert ("warning: no PEFT module for blk.0.ffn_down_exps.weight (and 5 more): this run writes "
                "adapter.gguf only") in err
    assert (folder / "peft" / "adapter_model.safetensors").is_file() == (kind not in NO_PEFT)


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_reloads_in_llama_cpp_python(work, kind, tmp_path):
    from prge_gguf.engine.llama import LlamaEngine

    folder, _ = run(work, kind)
    trained = read_gguf(folder / "adapter.gguf")
    strong = tmp_path / "strong.gguf"
    write_gguf(boosted(trained), strong)
    with LlamaEngine(model(work, kind), n_ctx=128, threads=1) as engine:
        tokens = engine.tokenize(TEXT, add_special=True)
        base = engine_logprobs(engine, tokens, None)
        for adapter, path in ((trained, folder / "adapter.gguf"), (read_gguf(strong), strong)):
            ours = engine_logprobs(engine, tokens, adapter)
            theirs = llama_cpp_python_logprobs(model(work, kind), path, tokens)
            # Measured 2026-12-02: at most 8e-7 apart (float32 log-softmax), on every architecture.
            np.testing.assert_allclose(theirs, ours, atol=1e-5, err_msg=f"{kind}: {path.name}")
        assert np.abs(ours - base).max() > 100 * 1e-5  # the boosted adapter really acts


@pytest.mark.parametrize("kind", KINDS)
def test_merged_export_loads(work, kind, tmp_path):
    from prge_gguf.engine.llama import LlamaEngine

    folder, _ = run(work, kind)
    adapter = boosted(read_gguf(folder / "adapter.gguf"))
    path, merged = tmp_path / "strong.gguf", tmp_path / "merged.gguf"
    write_gguf(adapter, path)
    code, _, err = cli("export", path, "--model", model(work, kind), "--to", "merged", "--type", "F16",
                       "--out", merged)
    assert code == 0, err
    assert read_header(merged).architecture == ARCHS[kind].name
    with LlamaEngine(model(work, kind), n_ctx=128, threads=1) as engine:
        tokens = engine.tokenize(TEXT, add_special=True)
        target = engine_logprobs(engine, tokens, adapter)
        base = engine_logprobs(engine, tokens, None)
    with LlamaEngine(merged, n_ctx=128, threads=1) as m:
        got = engine_logprobs(m, tokens, None)
    # Apart only by F16 rounding of the merged weights and the base's Q8_0 dot products (on
    # quantized activations): far closer to base + adapter than the base is.
    assert np.abs(got - target).max() < 0.1 * np.abs(base - target).max()


@pytest.mark.parametrize("kind", KINDS)
def test_peft_round_trip(work, kind, tmp_path):
    folder, _ = run(work, kind)
    src = folder / "adapter.gguf"
    peft, back = tmp_path / "peft", tmp_path / "back.gguf"
    code, _, err = cli("export", src, "--model", model(work, kind), "--to", "peft", "--out", peft)
    if kind in NO_PEFT:  # refused in one line; the part PEFT names goes through
        assert code == 2 and not peft.exists()
        assert err.startswith("error: blk.0.ffn_down_exps.weight: no PEFT module for this tensor of a "
                              f"{kind} model (expected one of attn_q, ") and err.count("\n") == 1
        src = tmp_path / "named.gguf"
        write_gguf(peft_part(read_gguf(folder / "adapter.gguf")), src)
        code, _, err = cli("export", src, "--model", model(work, kind), "--to", "peft", "--out", peft)
    assert code == 0, err
    assert cli("export", peft, "--model", model(work, kind), "--to", "gguf", "--out", back)[0] == 0
    original, again = read_gguf(src), read_gguf(back)
    assert again.names == original.names and again.architecture == original.architecture
    for n in original.names:
        np.testing.assert_array_equal(again.a[n], original.a[n])
        np.testing.assert_array_equal(again.b[n], original.b[n])
    if kind in SPLIT_QKV:  # out as three LoRAs sharing A, B's rows un-permuted for q and k
        from safetensors.numpy import load_file

        raw = load_file(str(peft / "adapter_model.safetensors"))
        prefix = "base_model.model.model.layers.0.self_attn"
        assert not any("qkv" in key for key in raw)
        shared = raw[f"{prefix}.q_proj.lora_A.weight"]
        for proj in ("k_proj", "v_proj"):
            np.testing.assert_array_equal(raw[f"{prefix}.{proj}.lora_A.weight"], shared)
        fused = original.b["blk.0.attn_qkv.weight"]
        np.testing.assert_array_equal(raw[f"{prefix}.v_proj.lora_B.weight"], fused[-32:])
        assert not np.array_equal(raw[f"{prefix}.q_proj.lora_B.weight"], fused[:64])


def test_fused_qkv_goes_to_peft_as_an_exact_split(work, tmp_path):
    """A fused attn_qkv adapter, exported to PEFT (q, k, v sharing A) and read back for the
    unfused twin model (the same weights, q, k, v apart), scores as the fused one does."""
    from converters.peft import from_peft, to_peft_for
    from prge_gguf.engine.llama import LlamaEngine

    fused = boosted(read_gguf(run(work, "llama-fused-qkv")[0] / "adapter.gguf"))
    to_peft_for(fused, tmp_path / "peft", read_header(model(work, "llama-fused-qkv")))
    split = from_peft(tmp_path / "peft")
    assert split.targets == sorted(TARGETS)
    scores = []
    for kind, adapter in (("llama-fused-qkv", fused), ("llama", split)):
        with LlamaEngine(model(work, kind), n_ctx=128, threads=1) as engine:
            tokens = engine.tokenize(TEXT, add_special=True)
            scores.append([engine_logprobs(engine, tokens, a) for a in (None, adapter)])
    (base_fused, ours_fused), (base_twin, ours_twin) = scores
    np.testing.assert_allclose(base_twin, base_fused, atol=1e-5)  # twins indeed
    np.testing.assert_allclose(ours_twin, ours_fused, atol=1e-5)
    assert np.abs(ours_fused - base_fused).max() > 100 * 1e-5

@pytest.mark.parametrize("kind", KINDS)
def test_torch_parity(work, kind):
    """transformers' GGUF loader (the torch engine) + the adapter scores as llama.cpp does."""
    pytest.importorskip("transformers")
    from prge_gguf.engine.llama import LlamaEngine
    from prge_gguf.engine.torch_engine import TorchEngine

    adapter = boosted(peft_part(read_gguf(run(work, kind)[0] / "adapter.gguf")))
    with LlamaEngine(model(work, kind), n_ctx=128, threads=1) as engine:
        tokens = engine.tokenize(TEXT, add_special=True)
        base, ours = (engine_logprobs(engine, tokens, a) for a in (None, adapter))
    try:
        torch_engine = TorchEngine(model(work, kind), threads=1)
    except ValueError as exc:  # "GGUF model with architecture X is not supported yet."
        pytest.skip(f"transformers cannot load it: {exc}")
    except PrgeError as exc:  # the engine's own refusal (a fused attn_qkv transformers would drop)
        pytest.skip(str(exc).split(": ", 1)[1])
    with torch_engine:
        theirs = engine_logprobs(torch_engine, tokens, adapter)
    # Q8_0 weights dequantized (torch) vs. Q8_0 dot products on Q8-quantized activations
    # (llama.cpp): measured 2026-12-02 0.004-0.008 apart against an effect of 0.7-1.1, except
    # llama at 0.016 (transformers drops the rope_freqs factors of Llama 3's rope scaling).
    assert np.abs(theirs - ours).max() < 0.05 * np.abs(ours - base).max()


# -- bad input: one clear line, exit 2, nothing written ----------------------------------------
def _gguf(path: Path, arch: str, tensors: dict[str, tuple[int, ...]]) -> Path:
    """A GGUF of `arch` holding zero tensors of these names and (numpy) shapes, no vocabulary."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    for name, shape in tensors.items():
        writer.add_tensor(name, np.zeros(shape, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _train(work: Path, model_path: Path, out: Path, *extra: str | Path) -> tuple[int, str]:
    code, _, err = cli("train", "--model", model_path, "--data", work / "train.jsonl", "--label-words",
                       "0=bad,1=good", "--steps", "1", "--batch-size", "4", "--eval-every", "0",
                       "--threads", "1", "--out", out, *extra)
    return code, err.strip().splitlines()[-1]


def test_bad_architecture_llama_cpp_cannot_load(work, tmp_path):
    tensors = {"token_embd.weight": (8, 64), "blk.0.attn_q.weight": (64, 64), "blk.0.attn_v.weight": (64, 64)}
    odd = _gguf(tmp_path / "odd.gguf", "notanarch", tensors)
    code, line = _train(work, odd, tmp_path / "run")
    assert code == 2
    assert line == (f"error: {odd}: llama.cpp could not load this model "
                    "(architecture 'notanarch' unsupported, or the file is corrupt)")
    assert not (tmp_path / "run").exists()


def test_bad_model_without_lora_targets(work, tmp_path):
    # A state-space model's blocks (Mamba: ssm_in, ssm_out, ...) hold none of the projections.
    tensors = {"token_embd.weight": (8, 64), "blk.0.ssm_in.weight": (256, 64),
               "blk.0.ssm_out.weight": (64, 128)}
    ssm = _gguf(tmp_path / "ssm.gguf", "mamba", tensors)
    code, out, _ = cli("info", ssm)
    assert code == 0
    assert "LoRA targets:  none (no block weight named attn_q, " in out
    code, line = _train(work, ssm, tmp_path / "run")
    assert code == 2
    assert line == (f"error: {ssm}: this mamba model has no weights LoRA can target (none of attn_q, attn_k, "
                    "attn_v, attn_output, ffn_gate, ffn_up, ffn_down, attn_qkv, ffn_gate_exps, ffn_up_exps, "
                    "ffn_down_exps in its blocks)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("kind", "targets", "expected"), [
    ("phi3", "attn_q,attn_v", "unknown target 'attn_q' for this phi3 model (expected some of: attn_output, "
                              "ffn_up, ffn_down, attn_qkv; its q, k and v are one weight, attn_qkv)"),
    ("qwen3moe", "attn_q,ffn_gate", "unknown target 'ffn_gate' for this qwen3moe model (expected some of: "
                                    "attn_q, attn_k, attn_v, attn_output, ffn_gate_exps, ffn_up_exps, "
                                    "ffn_down_exps)"),
])
def test_bad_target_the_model_lacks(work, tmp_path, kind, targets, expected):
    code, line = _train(work, model(work, kind), tmp_path / "run", "--targets", targets)
    assert (code, line) == (2, f"error: --targets: {expected}")
    assert not (tmp_path / "run").exists()


def test_default_targets_of_a_fused_model_are_its_qkv(work, tmp_path):
    code, _ = _train(work, model(work, "phi3"), tmp_path / "run")
    assert code == 0
    assert read_gguf(tmp_path / "run" / "adapter.gguf").targets == ["attn_qkv"]


def test_bad_adapter_of_another_architecture(work, tmp_path):
    qwen2 = run(work, "qwen2")[0] / "adapter.gguf"
    code, line = _train(work, model(work, "qwen3"), tmp_path / "run", "--adapter", qwen2)
    assert (code, line) == (2, f"error: {qwen2}: adapter is for a qwen2 model, this model is qwen3: "
                               "an adapter for another model")
    assert not (tmp_path / "run").exists()


def test_bad_adapter_of_another_size(work, tmp_path, model_path):
    tiny = read_gguf(run(work, "llama")[0] / "adapter.gguf")
    # With its fingerprint (ours), and without one (an adapter made elsewhere): shapes decide.
    anonymous = tmp_path / "anonymous.gguf"
    write_gguf(LoraAdapter(tiny.architecture, tiny.alpha, dict(tiny.a), dict(tiny.b)), anonymous)
    merged = tmp_path / "merged.gguf"
    cases = ((run(work, "llama")[0] / "adapter.gguf", "adapter was trained for another base model"),
             (anonymous, "adapter tensor blk.0.attn_k.weight needs a weight of shape (32, 64), "
                         "this model has shape (192, 576): an adapter for another model"))
    for adapter, expected in cases:
        code, line = _train(work, model_path, tmp_path / "run", "--adapter", adapter)
        assert code == 2 and line.startswith(f"error: {adapter}: {expected}"), line
        code, _, err = cli("export", adapter, "--model", model_path, "--to", "merged", "--out", merged)
        assert code == 2 and err.strip().startswith(f"error: {adapter}: {expected}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anonymous.gguf"]


def test_bad_peft_adapter_for_a_fused_qkv_model(work, tmp_path):
    # A PEFT adapter made elsewhere has its own lora_A per q, k, v: no single attn_qkv LoRA equals it.
    separate = run(work, "llama")[0] / "peft"
    out = tmp_path / "fused.gguf"
    fused = model(work, "llama-fused-qkv")
    code, _, err = cli("export", separate, "--model", fused, "--to", "gguf", "--out", out)
    assert code == 2
    weights = separate / "adapter_model.safetensors"
    assert err.strip() == (f"error: {weights}: block 0: this model fuses q, k and v into one attn_qkv, "
                           "which takes q_proj, k_proj and v_proj LoRAs only with one shared lora_A "
                           "(as 'prge-gguf export' writes them)")
    assert not out.exists()
