"""The llama.cpp engine on the real default model: adapters, batching, export to llama.cpp."""

import numpy as np
import pytest

from prge_gguf.engine import ScoreRequest
from prge_gguf.lora import init_lora_fa, read_gguf, write_gguf

pytestmark = pytest.mark.slow

TEXTS = ["a gorgeous, witty, seductive movie. It was", "the plot is nothing but boilerplate. It was",
         "It was"]


def _full_requests(engine, texts=TEXTS):
    """One request per text: log-probs of every vocabulary entry after its last token."""
    everything = tuple(range(engine.n_vocab))
    out = []
    for t in texts:
        toks = engine.tokenize(t, add_special=True)
        out.append(ScoreRequest(tuple(toks), (len(toks) - 1,), (everything,)))
    return out


def _random_b(adapter, scale=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return adapter.with_b({n: (scale * rng.standard_normal(b.shape)).astype(np.float32)
                           for n, b in adapter.b.items()})


def test_zero_b_adapter_is_bit_identical_to_no_adapter(engine):
    reqs = _full_requests(engine)
    base = engine.score(reqs, [])
    zero = init_lora_fa(engine.header, ["attn_q", "attn_v", "ffn_down"], 8, 16, seed=0)
    with_zero = engine.score(reqs, [(zero, 1.0)])
    for a, b in zip(base, with_zero, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
    trained = engine.score(reqs, [(_random_b(zero), 1.0)])
    assert max(np.abs(a[0] - b[0]).max() for a, b in zip(base, trained, strict=True)) > 1e-2


def test_batched_scoring_equals_one_sequence_at_a_time(engine):
    adapter = _random_b(init_lora_fa(engine.header, ["attn_v"], 4, 8, seed=1))
    reqs = _full_requests(engine)
    together = engine.score(reqs, [(adapter, 1.0)])
    for req, joint in zip(reqs, together, strict=True):
        alone = engine.score([req], [(adapter, 1.0)])[0]
        np.testing.assert_allclose(joint[0], alone[0], atol=2e-4)


def test_every_scored_row_is_normalised_over_the_vocabulary(engine):
    # More scored rows than one log-sum-exp chunk, so the rows are split among the engine's threads.
    toks = engine.tokenize(" ".join(TEXTS * 8), add_special=True)
    everything = tuple(range(engine.n_vocab))
    positions = tuple(range(len(toks)))
    assert len(positions) > 2 * 32
    rows = engine.score([ScoreRequest(tuple(toks), positions, (everything,) * len(positions))], [])[0]
    sums = np.array([np.logaddexp.reduce(r.astype(np.float64)) for r in rows])
    np.testing.assert_allclose(sums, 0.0, atol=1e-4)
    # A row's log-probs do not depend on how many rows share its decode.
    alone = engine.score([ScoreRequest(tuple(toks), positions[-1:], (everything,))], [])[0][0]
    np.testing.assert_allclose(rows[-1], alone, atol=1e-4)


def test_a_smaller_context_packs_fewer_sequences_per_decode_and_refuses_longer_ones(engine):
    from prge_gguf.errors import PrgeError

    adapter = _random_b(init_lora_fa(engine.header, ["attn_v"], 4, 8, seed=2))
    reqs = _full_requests(engine, TEXTS * 4)  # 12 sequences, ~120 tokens: one decode at 1024
    before = engine.score(reqs, [(adapter, 1.0)])
    engine.timings.clear()
    try:
        engine.set_context(32)
        after = engine.score(reqs, [(adapter, 1.0)])
        with pytest.raises(PrgeError, match="does not fit the context of 32 tokens"):
            engine.score(_full_requests(engine, [" ".join(TEXTS * 3)]), [])
    finally:
        engine.set_context(1024)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(a[0], b[0], atol=2e-4)
    assert engine.timings["decode"] > 0


def test_exported_adapter_gives_same_logits_in_llama_cpp_python(engine, model_path, tmp_path):
    check_llama_cpp_python_reload(engine, model_path, tmp_path)


def check_llama_cpp_python_reload(engine, model_path, tmp_path):
    """An adapter written by us, loaded by llama-cpp-python's Llama(lora_path=...), gives the
    engine's log-probs."""
    from llama_cpp import Llama

    adapter = _random_b(init_lora_fa(engine.header, ["attn_q", "attn_k", "attn_v", "ffn_gate"],
                                     8, 16, seed=5), scale=0.03)
    path = tmp_path / "adapter.gguf"
    write_gguf(adapter, path)
    reloaded = read_gguf(path)
    assert reloaded.names == adapter.names and reloaded.alpha == 16.0
    for n in adapter.names:
        np.testing.assert_array_equal(reloaded.b[n], adapter.b[n])

    text = TEXTS[0]
    ours = engine.score(_full_requests(engine, [text]), [(reloaded, 1.0)])[0][0]
    llm = Llama(model_path=str(model_path), lora_path=str(path), n_ctx=256, n_threads=2,
                logits_all=True, verbose=False)
    tokens = llm.tokenize(text.encode(), add_bos=True, special=False)
    assert tokens == engine.tokenize(text, add_special=True)
    llm.eval(tokens)
    logits = np.array(llm.scores[len(tokens) - 1], dtype=np.float64)
    theirs = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    np.testing.assert_allclose(ours, theirs, atol=1e-3)
    assert int(np.argmax(ours)) == int(np.argmax(theirs))
    base = engine.score(_full_requests(engine, [text]), [])[0][0]
    assert np.abs(base - theirs).max() > 1e-2  # the adapter really was applied there
    llm.close()


def test_generate_is_greedy_under_the_adapter(engine, capsys, tmp_path):
    adapter = _random_b(init_lora_fa(engine.header, ["attn_v"], 8, 16, seed=6), scale=0.05)
    prompt = engine.tokenize(TEXTS[0], add_special=True)
    out = engine.generate(prompt, [(adapter, 1.0)], max_tokens=4)
    assert 1 <= len(out) <= 4
    # Each generated token is the argmax of the scored next-token distribution, prefix by prefix.
    everything = tuple(range(engine.n_vocab))
    for k, token in enumerate(out):
        seq = tuple(prompt + out[:k])
        (lp,) = engine.score([ScoreRequest(seq, (len(seq) - 1,), (everything,))], [(adapter, 1.0)])[0]
        assert int(np.argmax(lp)) == token

    from prge_gguf.cli import main

    path = tmp_path / "a.gguf"
    write_gguf(adapter, path)
    assert main(["generate", "--adapter", str(path), "--prompt", TEXTS[0], "--max-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert printed == f"### prompt\n{TEXTS[0]}\n### completion\n{engine.detokenize(out)}\n\n"
