"""The optimizers: updates of torch.optim.AdamW and SGD with momentum, and the settings they take."""

import json

import numpy as np
import pytest

from prge_gguf.cli import main
from prge_gguf.optim import BETAS, EPS, AdamW, Momentum, Sgd, make_optimizer
from prge_gguf.settings import DEFAULT_LR
from prge_gguf.train import TrainConfig

SHAPES = {"blk.0.attn_v.weight.lora_b": (4, 3), "blk.0.attn_v.weight.lora_a": (3, 5)}


def _compare_with_torch(ours, make_reference, lrs, grad_scale, rtol) -> dict:
    """Run our optimizer `ours` and the torch optimizer `make_reference(leaves)` side by side
    over the lr schedule `lrs`; assert equal params each step; return our state."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    leaves = {n: torch.tensor(p, requires_grad=True) for n, p in params.items()}
    reference = make_reference(torch, list(leaves.values()))
    for t, lr in enumerate(lrs, start=1):
        grads = {n: (rng.standard_normal(s) * grad_scale(rng, s)).astype(np.float32)
                 for n, s in SHAPES.items()}
        params = ours.step(params, grads, t=t, lr=lr)
        for group in reference.param_groups:
            group["lr"] = lr
        for n, leaf in leaves.items():
            leaf.grad = torch.from_numpy(grads[n])
        reference.step()
        for n, leaf in leaves.items():
            np.testing.assert_allclose(params[n], leaf.detach().numpy(), rtol=rtol, atol=1e-7)
            assert params[n].dtype == np.float32
    return ours.state_dict()


def test_adam_steps_match_torch_adamw():
    state = _compare_with_torch(
        AdamW(weight_decay=0.1),
        lambda torch, leaves: torch.optim.AdamW(leaves, lr=1.0, betas=BETAS, eps=EPS, weight_decay=0.1),
        [1e-2, 5e-3, 2e-2, 1e-3, 1e-2],  # a schedule: lr changes per step
        # Gradients of mixed sizes, some tiny: eps and the bias corrections both matter.
        lambda rng, s: 10.0 ** rng.integers(-9, 1, s), rtol=2e-6)
    assert sorted(state) == sorted(f"{k}/{n}" for k in "mv" for n in SHAPES)


def test_momentum_steps_match_torch_sgd_with_momentum():
    state = _compare_with_torch(
        Momentum(weight_decay=0.1),
        lambda torch, leaves: torch.optim.SGD(leaves, lr=1.0, momentum=BETAS[0], weight_decay=0.1),
        [1e-2, 5e-3, 2e-2], lambda rng, s: 1.0, rtol=1e-5)
    assert sorted(state) == sorted(f"m/{n}" for n in SHAPES)


def test_sgd_matches_torch_sgd_and_keeps_no_state():
    state = _compare_with_torch(Sgd(weight_decay=0.1), lambda torch, leaves: torch.optim.SGD(leaves, lr=1.0,
                                weight_decay=0.1), [1e-2, 5e-3], lambda rng, s: 1.0, rtol=1e-6)
    assert state == {}


def test_the_optimizer_of_each_name_resumes_from_its_state_dict():
    rng = np.random.default_rng(0)
    params = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    grads = [{n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()} for _ in range(3)]
    kinds = {"zo": Sgd, "sgd": Sgd, "zo-momentum": Momentum, "zo-adam": AdamW, "adam": AdamW}
    for name, kind in kinds.items():
        through, first = make_optimizer(name, 0.1), make_optimizer(name, 0.1)
        assert type(through) is kind
        a = b = params
        for t, g in enumerate(grads, start=1):
            a = through.step(a, g, t=t, lr=1e-2)
            b = first.step(b, g, t=t, lr=1e-2)
            if t == 1:  # a checkpoint after one step, resumed by a fresh optimizer
                first, saved = make_optimizer(name, 0.1), first.state_dict()
                first.load_state_dict(saved)
        for n in SHAPES:
            np.testing.assert_array_equal(a[n], b[n])


def test_gemma3_takes_its_own_zeroth_order_defaults():
    from prge_gguf.settings import architecture_defaults

    assert architecture_defaults("gemma3", "zo") == pytest.approx({"lr": 1e-3, "eps": 2e-2})
    assert architecture_defaults("gemma3", "zo-momentum") == pytest.approx({"lr": 1e-4, "eps": 2e-2})
    assert architecture_defaults("gemma3", "zo-adam") == {"eps": 2e-2}  # Adam's steps ignore the scale
    assert architecture_defaults("gemma3", "adam") == architecture_defaults("llama", "zo") == {}


def test_each_optimizer_has_its_default_lr_and_an_explicit_lr_wins():
    assert TrainConfig().lr == DEFAULT_LR["zo"] == 2e-2
    assert TrainConfig(optimizer="adam").lr == DEFAULT_LR["adam"] == 1e-3
    assert TrainConfig(optimizer="adam", lr=3e-4).lr == 3e-4


def test_train_a_with_zo_is_a_one_line_error(tmp_path, capsys):
    code = main(["train", "--task", "sst2", "--train-a", "--steps", "1", "--out", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: --train-a trains A by backprop: use --optimizer sgd or adam (P-RGE trains B only)")
    assert not (tmp_path / "run").exists()


def test_resume_with_a_missing_optimizer_state_is_a_one_line_error(tmp_path, capsys, model_path):
    from prge_gguf.gguf_header import read_header
    from prge_gguf.lora import init_lora_fa, write_gguf

    (tmp_path / "config.json").write_text("{}")
    adapter = init_lora_fa(read_header(model_path), ["attn_v"], 4, 8, seed=0)
    write_gguf(adapter, tmp_path / "checkpoint-000002.gguf")
    (tmp_path / "checkpoint.json").write_text(
        json.dumps({"step": 2, "adapter": "checkpoint-000002.gguf", "optimizer": "optimizer-000002.npz"}))
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'optimizer-000002.npz'}: cannot read the "
                                               "checkpoint's optimizer state (No such file or directory)")
