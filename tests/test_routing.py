"""Adapter routing (`--routing`, patches/llama-cpp-adapter-routing.patch): a llama.cpp context
holding several adapters, each applied to its own sequences, scores a step's perturbations in
shared decodes.

Routing is exact: each adapter's log-probs equal, bit for bit, those of the same packed decodes
with that adapter alone on every sequence. They are not those of scoring the adapter's sequences
by themselves: llama.cpp's results depend on what else a decode holds (docs/engines.md).

The patched llama-cpp-python is built from PyPI's sdist (scripts/build_llama_routing.py, cached
per patch) and loaded in a child process, so that this one keeps the stock build."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prge_gguf.engine import llama_context
from prge_gguf.engine.llama import LlamaEngine
from prge_gguf.errors import PrgeError

ROOT = Path(__file__).resolve().parents[1]
N_CTX = 256


@pytest.mark.skipif(llama_context.ROUTING, reason="this llama.cpp has adapter routing")
def test_routing_without_the_patched_build_is_refused_in_one_line(model_path):
    with pytest.raises(PrgeError, match="--routing needs llama.cpp built with"):
        LlamaEngine(model_path, n_ctx=64, threads=1, routing=True)


def test_building_a_version_pypi_lacks_ends_in_one_error_line(tmp_path):
    script = ROOT / "scripts" / "build_llama_routing.py"
    out = subprocess.run([sys.executable, str(script), "--version", "0.0.999", "--no-install"],
                         capture_output=True, text=True, env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path)))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not any(tmp_path.rglob("*.whl"))


@pytest.fixture(scope="module")
def routed_site(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from build_llama_routing import build_wheel
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    wheel = build_wheel()
    site = tmp_path_factory.mktemp("routed-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target",
                    str(site), str(wheel)], check=True)
    return site


@pytest.mark.slow
def test_routed_scores_equal_each_adapter_alone_in_the_same_decodes(routed_site, model_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(routed_site), str(ROOT)]))
    out = subprocess.run([sys.executable, __file__, str(model_path)], env=env, capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["routing"] is True
    # 5 perturbations: one context holding all 5; two holding 3 and 2.
    assert result["max_abs_diff"] == {"1": 0.0, "2": 0.0}
    assert result["decodes_routed"] < result["decodes_plain"]  # they did share decodes
    assert result["moved"] > 0  # and the adapters differ, so a misrouted one would show
    assert "not on a mixture's experts" in result["experts"]  # the patch masks dense weights only


def _compare(model: str) -> dict:
    """In the child: 5 adapters routed on K contexts against each alone in the same decodes."""
    from prge_gguf.data import tokenize_example
    from prge_gguf.lora import init_lora_fa
    from prge_gguf.tasks import builtin_task

    result: dict = {"routing": llama_context.ROUTING, "max_abs_diff": {}}
    with LlamaEngine(model, n_ctx=N_CTX, threads=2, parallel=1, routing=False) as engine:
        task = builtin_task("sst2")
        batch = [tokenize_example(engine, e) for e in task.examples(task.train_file)[:6]]
        requests = [r for ex in batch for r in ex.requests]
        n = len(requests)
        start = init_lora_fa(engine.header, ["attn_q", "attn_v", "ffn_down"], 8, 16, seed=0)
        rng = np.random.default_rng(0)
        adapters = [start.with_b({k: (0.05 * rng.standard_normal(b.shape)).astype(np.float32)
                                  for k, b in start.b.items()}) for _ in range(5)]
        calls = _count_decodes()
        plain = engine.score_each(requests, adapters)
        result["decodes_plain"] = calls()
        for k in (1, 2):
            engine.set_routing(True)
            engine.set_parallel(k)
            engine.set_context(N_CTX)
            calls = _count_decodes()
            routed = engine.score_each(requests, adapters)
            if k == 1:
                result["decodes_routed"] = calls()
            else:
                calls()
            engine.set_routing(False)
            # A routed context holds ceil(5 / k) adapters and as many times the tokens: decodes
            # packed alike need a context that size.
            engine.set_context(N_CTX * -(-len(adapters) // k))
            diffs = []
            for i, adapter in enumerate(adapters):  # adapter i: context i % k, place i // k of its share
                share = len(adapters[i % k::k])
                alone = engine.score(requests * share, [(adapter, 1.0)])[i // k * n:(i // k + 1) * n]
                diffs += [float(np.abs(g - w).max()) for gr, wr in zip(routed[i], alone, strict=True)
                          for g, w in zip(gr, wr, strict=True)]
            result["max_abs_diff"][str(k)] = max(diffs)
        result["moved"] = max(float(np.abs(a - b).max()) for ra, rb in zip(plain[0], plain[1], strict=True)
                              for a, b in zip(ra, rb, strict=True))
    result["experts"] = _routed_experts_error()
    return result


def _routed_experts_error() -> str:
    """The error of routing adapters on a mixture's expert tensors (a tiny qwen3moe)."""
    import tempfile

    from prge_gguf.lora import init_lora_fa
    from prge_gguf.scoring import ScoreRequest
    from prge_gguf.synthetic import write_tiny

    with tempfile.TemporaryDirectory() as tmp:
        moe = write_tiny(Path(tmp) / "moe.gguf", "qwen3moe")
        with LlamaEngine(moe, n_ctx=64, threads=1, parallel=1, routing=True) as engine:
            adapter = init_lora_fa(engine.header, ["ffn_up_exps"], 4, 8, seed=0)
            tokens = tuple(engine.tokenize("a b c", add_special=True))
            request = ScoreRequest(tokens, (len(tokens) - 2,), ((tokens[-1],),))
            try:
                engine.score_each([request], [adapter, adapter])
            except PrgeError as exc:
                return str(exc)
    return "no error"


def _count_decodes():
    """Count llama.cpp decodes from now on; call the result to stop and get the count."""
    real, counted = llama_context.LlamaContext.run, []

    def run(self, *args, **kwargs):
        counted.append(1)
        return real(self, *args, **kwargs)

    llama_context.LlamaContext.run = run

    def stop() -> int:
        llama_context.LlamaContext.run = real
        return len(counted)

    return stop


if __name__ == "__main__":
    print(json.dumps(_compare(sys.argv[1])))
