"""The torch reference engine: parity with llama.cpp, one forward for all 2q perturbations, batched
scoring equal to each request's own logits, and the first-order baseline (exact gradients of B and
A, Adam training, exact resume)."""

import contextlib
import json

import numpy as np
import pytest

from prge_gguf import cli, job
from prge_gguf.lora import init_lora_fa, read_gguf
from prge_gguf.run_dir import RunDir
from prge_gguf.targets import TARGETS
from prge_gguf.tasks import builtin_task, tokenize
from prge_gguf.train import TrainConfig, losses_of, train

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
    task = builtin_task("sst2-mezo")  # the prompt MAX_DIFF and MEAN_DIFF were measured on
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


def _alone(torch_engine, request, adapter):
    """Log-probs of one request's candidates, straight from the full logits of its own forward."""
    import torch

    torch_engine._install([adapter])
    try:
        with torch.no_grad():
            logits = torch_engine.model(input_ids=torch.tensor([request.tokens])).logits[0]
    finally:
        torch_engine._install([])
    logp = torch.log_softmax(logits.double(), dim=-1).numpy()
    return [logp[p, list(c)] for p, c in zip(request.positions, request.candidates, strict=True)]


def test_batched_scoring_equals_scoring_each_request_alone(model_path, monkeypatch):
    from prge_gguf.engine import torch_engine as module
    from prge_gguf.scoring import ScoreRequest

    # float64: padding and other matmul shapes move float32 log-probs by ~1e-5, which would hide
    # a mix-up of slices whose B differ little; in float64 anything above 1e-9 is a mistake.
    with module.TorchEngine(model_path, threads=2, dtype="float64") as torch_engine:
        texts = ["a triumph", "the plot is thin and the acting is worse, yet it somehow moves along",
                 "meh", "an unexpectedly tender film about two brothers", "nothing here is scored"]
        tokens = [tuple(torch_engine.tokenize(t, add_special=True)) for t in texts]
        requests = []
        for i, toks in enumerate(tokens[:-1]):
            # A repeated position, and 1, 2 or 3 candidates at a position.
            positions = (len(toks) - 1, 0, len(toks) - 1, len(toks) // 2)[: 1 + i]
            candidates = tuple(tuple((7 * i + 11 * j + 13 * c) % torch_engine.n_vocab
                                     for c in range(1 + j % 3)) for j in range(len(positions)))
            requests.append(ScoreRequest(toks, positions, candidates))
        requests.append(ScoreRequest(tokens[-1], (), ()))  # alone in the last chunk: nothing to gather

        base = _adapter(torch_engine.header, seed=8)
        rng = np.random.default_rng(9)
        adapters = [base.with_b({n: b + (0.02 * rng.standard_normal(b.shape)).astype(np.float32)
                                 for n, b in base.b.items()}) for _ in range(3)]
        k, longest = len(adapters), max(len(t) for t in tokens)
        monkeypatch.setattr(torch_engine, "_batch_tokens", 2 * k * longest)  # 2 requests a forward
        monkeypatch.setattr(module, "_SOFTMAX_VALUES", 3 * k * torch_engine.n_vocab)  # 3 positions a block
        batched = torch_engine.score_each(requests, adapters)
        for adapter, slot in zip(adapters, batched, strict=True):
            for request, got in zip(requests, slot, strict=True):
                want = _alone(torch_engine, request, adapter)
                assert [len(c) for c in got] == [len(c) for c in request.candidates]
                for x, y in zip(got, want, strict=True):
                    np.testing.assert_allclose(x, y, rtol=0, atol=1e-9)
    flat = [np.concatenate([c for r in slot for c in r]) for slot in batched]
    assert np.abs(flat[0] - flat[1]).max() > 1e-3  # each slice had its own B


def test_cli_trains_and_evaluates_on_the_torch_engine(tmp_path, capsys):
    main = cli.main
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "a triumph", "label": 1}\n{"text": "a mess", "label": 0}\n')
    out = tmp_path / "run"
    assert main(["train", "--engine", "torch", "--task", "sst2", "--valid", str(valid), "--steps", "2",
                 "--batch-size", "2", "--q", "2", "--targets", "attn_v", "--eval-every", "0",
                 "--threads", "2", "--out", str(out)]) == 0
    fo = tmp_path / "fo"
    assert main(["train", "--engine", "torch", "--optimizer", "sgd", "--lr", "1e-3", "--task", "sst2",
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


def _train_rows(engine, n):
    task = builtin_task("sst2")
    return [tokenize(engine, e) for e in task.examples(task.train_file)[:n]]


def test_exact_gradient_matches_the_central_differences_prge_uses(engine, model_path):
    from prge_gguf.engine.torch_engine import TorchEngine

    batch = _train_rows(engine, 6)
    requests = [r for ex in batch for r in ex.requests]
    adapter = _adapter(engine.header, seed=4, scale=0.02)
    # float64: float32's rounding in the loss (~1e-6) is ~5% of a difference quotient at eps 1e-3
    # for a direction of small slope; in float64 only the O(eps^2) term is left.
    with TorchEngine(model_path, threads=2, dtype="float64") as torch_engine:
        loss, grads = torch_engine.loss_gradient(batch, adapter, "label")
        assert sorted(grads) == sorted(adapter.trainable(False))  # B only: LoRA-FA
        rng = np.random.default_rng(5)
        eps = 1e-3
        for _ in range(3):
            z = {n: rng.standard_normal(b.shape).astype(np.float32) for n, b in adapter.b.items()}
            pair = [adapter.with_b({n: adapter.b[n] + s * eps * z[n] for n in adapter.names})
                    for s in (1, -1)]
            plus, minus = (losses_of(batch, results, "label")[0].mean()
                           for results in torch_engine.score_each(requests, pair))
            directional = sum(float((grads[f"{n}.lora_b"] * z[n]).sum()) for n in adapter.names)
            assert (plus - minus) / (2 * eps) == pytest.approx(directional, rel=0.02, abs=1e-3)
        base = losses_of(batch, torch_engine.score(requests, [(adapter, 1.0)]), "label")[0].mean()
        assert loss == pytest.approx(base, rel=1e-6)


def test_a_gradient_matches_central_differences(engine, torch_engine):
    batch = _train_rows(engine, 6)
    requests = [r for ex in batch for r in ex.requests]
    adapter = _adapter(engine.header, seed=6, scale=0.05)  # B != 0, else A has no gradient
    _, grads = torch_engine.loss_gradient(batch, adapter, "label", train_a=True)
    assert sorted(grads) == sorted(adapter.trainable(True))
    rng = np.random.default_rng(7)
    eps = 1e-3
    for _ in range(2):
        z = {n: rng.standard_normal(a.shape).astype(np.float32) for n, a in adapter.a.items()}
        pair = [adapter.with_tensors({f"{n}.lora_a": adapter.a[n] + s * eps * z[n] for n in adapter.names})
                for s in (1, -1)]
        plus, minus = (losses_of(batch, torch_engine.score(requests, [(a, 1.0)]), "label")[0].mean()
                       for a in pair)
        directional = sum(float((grads[f"{n}.lora_a"] * z[n]).sum()) for n in adapter.names)
        assert abs(directional) > 0.05  # large against fp32 noise, so 2% means something
        assert (plus - minus) / (2 * eps) == pytest.approx(directional, rel=0.02)


def test_adam_with_full_lora_lowers_the_training_loss(engine, torch_engine, tmp_path):
    # Every step sees the same 8 examples, so each logged loss (the loss before that step's
    # update) is the training objective.
    cfg = TrainConfig(steps=5, batch_size=8, optimizer="adam", train_a=True, targets=["attn_v"],
                      eval_every=0)
    adapter = init_lora_fa(engine.header, cfg.targets, cfg.rank, cfg.alpha, cfg.seed)
    run = RunDir.open_new(tmp_path, {}, adapter)
    trained = train(torch_engine, adapter, _train_rows(engine, 8), [], cfg, run)
    run.close()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.1 and losses == sorted(losses, reverse=True), losses
    name = adapter.names[0]
    assert not np.array_equal(trained.a[name], adapter.a[name])  # A trained too
    np.testing.assert_array_equal(read_gguf(tmp_path / "adapter.gguf").a[name], trained.a[name])


@pytest.fixture
def cli_on_torch_engine(torch_engine, monkeypatch):
    """`prge-gguf ...` in this process on the loaded torch engine, whatever --engine says."""
    monkeypatch.setattr(job, "open_engine", lambda args: contextlib.nullcontext(torch_engine))
    return torch_engine


class _Killed(Exception):
    """Stands for SIGKILL: nothing in the training loop catches it, so no checkpoint is written."""


def test_adam_run_killed_then_resumed_is_bit_identical(cli_on_torch_engine, tmp_path, monkeypatch):
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "a joy to watch", "label": 1}\n')
    cmd = ["train", "--engine", "torch", "--optimizer", "adam", "--train-a", "--task", "sst2",
           "--valid", str(valid), "--steps", "6", "--batch-size", "2", "--targets", "attn_v",
           "--checkpoint-every", "2", "--eval-every", "0", "--out"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert cli.main([*cmd, str(whole)]) == 0

    real, calls = cli_on_torch_engine.loss_gradient, []

    def dies_in_step_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(cli_on_torch_engine, "loss_gradient", dies_in_step_4)
    with pytest.raises(_Killed):
        cli.main([*cmd, str(killed)])
    monkeypatch.setattr(cli_on_torch_engine, "loss_gradient", real)
    state = json.loads((killed / "checkpoint.json").read_text())
    assert state == {"step": 2, "adapter": "checkpoint-000002.gguf", "optimizer": "optimizer-000002.npz"}

    assert cli.main(["train", "--resume", str(killed)]) == 0
    assert (killed / "adapter.gguf").read_bytes() == (whole / "adapter.gguf").read_bytes()
    with np.load(whole / "optimizer-000006.npz") as a, np.load(killed / "optimizer-000006.npz") as b:
        assert sorted(a.files) == sorted(b.files) and len(a.files) == 4 * 30  # m, v of A, B; 30 layers
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    assert sorted(p.name for p in killed.glob("*-0*")) == ["checkpoint-000006.gguf", "optimizer-000006.npz"]


def test_the_torch_loss_stays_on_the_log_probs_device():
    # The first-order baseline on --device cuda once failed: scores were built on the CPU.
    # The meta device stands in for a GPU here (no data, but device checks as strict).
    import torch

    from prge_gguf.engine.torch_engine import _torch_loss
    from prge_gguf.scoring import ScoreRequest, TokenizedExample

    ex = TokenizedExample(requests=(ScoreRequest((1, 2), (1,), ((5, 6),)),), owners=(((0, 1),),),
                          n_options=2, label=1)
    logprobs = torch.zeros(2, dtype=torch.float64, device="meta")
    assert _torch_loss(ex, [[logprobs]], "label").device.type == "meta"


def test_an_older_transformers_is_refused_in_one_line(model_path, monkeypatch):
    import transformers

    from prge_gguf.engine.torch_engine import TorchEngine
    from prge_gguf.errors import PrgeError

    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    with pytest.raises(PrgeError, match=r"needs transformers >= 5\.23 \(found 5\.17\.0"):
        TorchEngine(model_path)


@pytest.mark.default_model
def test_gemma_3_is_tokenized_as_llama_cpp_does_it():
    # transformers 5.17 cut "Review" into "Re" "view" and, up to 5.22, left out Gemma's <bos>.
    from prge_gguf.engine.llama import LlamaEngine
    from prge_gguf.engine.torch_engine import TorchEngine
    from prge_gguf.models import default_model_path

    task = builtin_task("sst2")
    texts = [e.context for e in task.examples(task.dev_file)[:20]]
    with LlamaEngine(default_model_path(), threads=2) as llama:
        want = [llama.tokenize(t, add_special=True) for t in texts]
    with TorchEngine(default_model_path(), threads=2) as reference:
        assert [reference.tokenize(t, add_special=True) for t in texts] == want
