"""The torch reference engine: parity with llama.cpp, and one forward for all 2q perturbations."""

import numpy as np
import pytest

from prge_gguf.lora import TARGETS, init_lora_fa
from prge_gguf.tasks import builtin_task, tokenize

pytestmark = pytest.mark.slow
pytest.importorskip("torch")

# Per-example scored log-probs (SST-2 label words, full-vocabulary softmax), llama.cpp Q4_1
# vs transformers fp32 on the same dequantized weights. llama.cpp quantizes activations to
# 8 bits in its matmuls; measured 2026-11-25 on this machine: max 0.23 nats, base and adapted.
MAX_DIFF, MEAN_DIFF = 0.35, 0.1


@pytest.fixture(scope="module")
def torch_engine(model_path):
    from prge_gguf.engine.torch_engine import TorchEngine

    with TorchEngine(model_path, threads=2) as eng:
        yield eng


@pytest.fixture(scope="module")
def requests_(engine):
    task = builtin_task("sst2")
    return [r for e in task.examples(task.dev_file)[:16] for r in tokenize(engine, e).requests]


def _adapter(header, seed=0, scale=0.05):
    adapter = init_lora_fa(header, list(TARGETS), 8, 16, seed=seed)
    rng = np.random.default_rng(seed)
    return adapter.with_b({n: (scale * rng.standard_normal(b.shape)).astype(np.float32)
                           for n, b in adapter.b.items()})


def test_torch_engine_matches_llama_cpp(engine, torch_engine, requests_):
    adapter = _adapter(engine.header)
    for adapters in ([], [(adapter, 1.0)]):
        ours = np.concatenate([r[0] for r in engine.score(requests_, adapters)])
        ref = np.concatenate([r[0] for r in torch_engine.score(requests_, adapters)])
        assert np.abs(ours - ref).max() < MAX_DIFF
        assert np.abs(ours - ref).mean() < MEAN_DIFF
    base = np.concatenate([r[0] for r in torch_engine.score(requests_, [])])
    adapted = np.concatenate([r[0] for r in torch_engine.score(requests_, [(adapter, 1.0)])])
    assert np.abs(adapted - base).max() > 5 * MEAN_DIFF  # the adapter acts in torch too


def test_one_forward_for_all_perturbations_equals_separate_forwards(engine, torch_engine, requests_):
    adapter = _adapter(engine.header, seed=1)
    rng = np.random.default_rng(2)
    perturbed = []
    for _ in range(2):  # q = 2: B + eps z and B - eps z for each z
        z = {n: (0.01 * rng.standard_normal(b.shape)).astype(np.float32) for n, b in adapter.b.items()}
        perturbed += [adapter.with_b({n: adapter.b[n] + s * z[n] for n in adapter.names}) for s in (1, -1)]
    together = torch_engine.score_each(requests_, perturbed)
    for joint, adapter_k in zip(together, perturbed, strict=True):
        alone = torch_engine.score(requests_, [(adapter_k, 1.0)])
        for x, y in zip(joint, alone, strict=True):
            np.testing.assert_allclose(x[0], y[0], atol=1e-5)
    spread = np.abs(np.concatenate([r[0] for r in together[0]]) - np.concatenate([r[0] for r in together[1]]))
    assert spread.max() > 1e-3  # each slice really had its own B


def test_cli_trains_and_evaluates_on_the_torch_engine(tmp_path, capsys):
    import json

    from prge_gguf.cli import main

    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "a triumph", "label": 1}\n{"text": "a mess", "label": 0}\n')
    out = tmp_path / "run"
    assert main(["train", "--engine", "torch", "--task", "sst2", "--valid", str(valid), "--steps", "2",
                 "--batch-size", "2", "--q", "2", "--targets", "attn_v", "--eval-every", "0",
                 "--threads", "2", "--out", str(out)]) == 0
    fo = tmp_path / "fo"
    assert main(["train", "--engine", "torch", "--optimizer", "fo", "--lr", "1e-3", "--task", "sst2",
                 "--valid", str(valid), "--steps", "2", "--batch-size", "2", "--targets", "attn_v",
                 "--eval-every", "0", "--threads", "2", "--out", str(fo)]) == 0
    fo_steps = [json.loads(line) for line in (fo / "metrics.jsonl").read_text().splitlines()][:2]
    assert [r["tokens"] for r in fo_steps] != [0, 0] and all(np.isfinite(r["loss"]) for r in fo_steps)
    saved = json.loads((out / "config.json").read_text())
    assert saved["source"]["engine"] == "torch"
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2]  # two steps, then the final evaluation
    capsys.readouterr()
    assert main(["eval", "--engine", "torch", "--valid", str(valid), "--task", "sst2",
                 "--adapter", str(out / "adapter.gguf"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 2


def test_exact_gradient_matches_the_central_differences_prge_uses(engine, torch_engine):
    from prge_gguf.train import losses_of

    task = builtin_task("sst2")
    batch = [tokenize(engine, e) for e in task.examples(task.train_file)[:6]]
    requests = [r for ex in batch for r in ex.requests]
    adapter = _adapter(engine.header, seed=4, scale=0.02)
    loss, grads = torch_engine.loss_gradient(batch, adapter, "label")
    rng = np.random.default_rng(5)
    eps = 1e-3
    for _ in range(3):
        z = {n: rng.standard_normal(b.shape).astype(np.float32) for n, b in adapter.b.items()}
        pair = [adapter.with_b({n: adapter.b[n] + s * eps * z[n] for n in adapter.names}) for s in (1, -1)]
        plus, minus = (losses_of(batch, results, "label")[0].mean()
                       for results in torch_engine.score_each(requests, pair))
        directional = sum(float((grads[n] * z[n]).sum()) for n in adapter.names)
        assert (plus - minus) / (2 * eps) == pytest.approx(directional, rel=0.02, abs=1e-3)
    base = losses_of(batch, torch_engine.score(requests, [(adapter, 1.0)]), "label")[0].mean()
    assert loss == pytest.approx(base, rel=1e-6)
