"""Training on the real default model and real SST-2 rows: the loss goes down; the CLI writes a run."""

import json

import numpy as np
import pytest

from prge_gguf.cli import main
from prge_gguf.data import tokenize_example
from prge_gguf.lora import init_lora_fa, read_gguf
from prge_gguf.run_dir import RunDir
from prge_gguf.tasks import builtin_task
from prge_gguf.train import TrainConfig, batch_indices, evaluate, train

pytestmark = pytest.mark.slow


def test_minibatch_loss_goes_down_on_real_data(engine, tmp_path):
    # MeZO's prompt: SmolLM2 gives nearly every row one label, so 12 steps have a loss to lower
    # (sst2's prompt starts close to its optimum on these rows: docs/design.md, Defaults).
    task = builtin_task("sst2-mezo")
    batch = [tokenize_example(engine, e) for e in task.examples(task.train_file)[:8]]
    # Every step sees the same 8 examples, so the minibatch loss is the training objective.
    cfg = TrainConfig(steps=12, batch_size=8, q=2, lr=1e-2, targets=["attn_v", "attn_output"],
                      eval_every=0)
    adapter = init_lora_fa(engine.header, cfg.targets, cfg.rank, cfg.alpha, cfg.seed)
    before = evaluate(engine, batch, adapter, cfg.loss)["loss"]
    run = RunDir.open_new(tmp_path, {}, adapter)
    trained = train(engine, adapter, batch, [], cfg, run)
    run.close()
    after = evaluate(engine, batch, trained, cfg.loss)["loss"]
    assert after < before - 0.05, (before, after)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert np.mean([r["loss"] for r in rows[-4:]]) < np.mean([r["loss"] for r in rows[:4]])
    saved = read_gguf(tmp_path / "adapter.gguf")
    np.testing.assert_array_equal(saved.b["blk.0.attn_v.weight"], trained.b["blk.0.attn_v.weight"])


def test_batches_are_seeded_epochs():
    first = [batch_indices(10, 4, seed=3, step=s) for s in range(5)]
    assert first == [batch_indices(10, 4, seed=3, step=s) for s in range(5)]
    epoch0 = first[0] + first[1] + first[2][:2]
    assert sorted(epoch0) == list(range(10))  # each epoch visits every example once
    assert first != [batch_indices(10, 4, seed=4, step=s) for s in range(5)]


def test_cli_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    valid = tmp_path / "valid.jsonl"
    valid.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in
                             [("a masterpiece", 1), ("dull and lifeless", 0), ("wonderful", 1)]))
    code = main(["train", "--task", "sst2", "--valid", str(valid), "--steps", "2", "--batch-size", "4",
                 "--targets", "attn_v", "--eval-every", "1", "--parallel", "1", "--out", str(out)])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"adapter.gguf", "best.gguf", "config.json", "metrics.jsonl",
                                               "checkpoint.json", "checkpoint-000002.gguf", "tensorboard",
                                               "peft"}
    # The PEFT folder holds the same adapter (test_peft checks the conversion against PEFT itself).
    from converters.peft import from_peft

    gguf, peft = read_gguf(out / "adapter.gguf"), from_peft(out / "peft")
    assert peft.names == gguf.names and peft.alpha == gguf.alpha
    for name in gguf.names:
        np.testing.assert_array_equal(peft.b[name], gguf.b[name])
    events = b"".join(p.read_bytes() for p in (out / "tensorboard").iterdir())
    assert b"eval_accuracy" in events and b"loss" in events  # the metrics mirrored to TensorBoard
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["steps"] == 2 and config["train"]["targets"] == ["attn_v"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [0, 1, 2]
    assert rows[-1]["eval_n"] == 3 and "final_eval_accuracy" in rows[-1]
    # Each step's time, split where the engine spent it (one context: several would sum theirs).
    for r in (r for r in rows if "loss" in r):
        assert r["decode_s"] > 0 and r["decode_s"] + r["adapter_s"] + r["logits_s"] < r["step_s"]
    capsys.readouterr()
    code = main(["eval", "--data", str(valid), "--label-words", "0=terrible,1=great",
                 "--template", "{text} It was", "--adapter", str(out / "adapter.gguf"), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 3 and 0.0 <= result["accuracy"] <= 1.0
    assert len(result["predicted"]) == 2 and sum(result["predicted"]) == 3
    ones = tmp_path / "ones.jsonl"  # one label throughout: the accuracy is the share predicted as it
    ones.write_text("".join(json.dumps({"text": t, "label": 1}) + "\n" for t in
                            ["a masterpiece", "dull and lifeless", "wonderful", "tedious"]))
    assert main(["eval", "--data", str(ones), "--label-words", "0=terrible,1=great", "--template",
                 "{text} It was", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert sum(result["predicted"]) == 4 and result["accuracy"] == result["predicted"][1] / 4


def test_adapter_for_another_base_is_refused(tmp_path, capsys, engine):
    from prge_gguf.lora import write_gguf

    adapter = init_lora_fa(engine.header, ["attn_v"], 4, 8, seed=0)
    other = adapter.with_b(adapter.b)
    object.__setattr__(other, "fingerprint", "0123456789abcdef")
    path = tmp_path / "other.gguf"
    write_gguf(other, path)
    code = main(["eval", "--task", "sst2", "--limit", "2", "--adapter", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "adapter was trained for another base model" in err and str(path) in err


def test_an_adapter_llama_cpp_refuses_stops_train_before_the_run_folder(tmp_path, capsys, engine):
    from prge_gguf.lora import LoraAdapter, write_gguf

    # token_embd fits our shape check, but llama.cpp wants its LoRA in another layout and refuses
    # it when it first applies the adapter, which train now does before making the run folder.
    start = init_lora_fa(engine.header, ["attn_v"], 4, 8, seed=0)
    embd = "token_embd.weight"
    out_dim, in_dim = engine.header.tensors[embd].shape
    a = {**start.a, embd: np.ones((4, in_dim), np.float32)}
    b = {**start.b, embd: np.zeros((out_dim, 4), np.float32)}
    adapter = LoraAdapter(start.architecture, start.alpha, a, b, start.fingerprint)
    path = tmp_path / "embd.gguf"
    write_gguf(adapter, path)
    code = main(["train", "--task", "sst2", "--batch-size", "2", "--steps", "1", "--eval-every", "0",
                 "--adapter", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: llama.cpp refused the adapter")
    assert err[0].startswith(f"warning: no PEFT module for {embd}")
    assert not (tmp_path / "run").exists()


def test_training_goes_on_from_a_given_adapter(tmp_path, capsys):
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "superb", "label": 1}\n')
    common = ["train", "--task", "sst2", "--valid", str(valid), "--batch-size", "2", "--eval-every", "0"]
    assert main([*common, "--targets", "attn_v", "--rank", "4", "--alpha", "4", "--num-layers", "3",
                 "--steps", "2", "--out", str(tmp_path / "first")]) == 0
    start = tmp_path / "first" / "adapter.gguf"
    first = read_gguf(start)
    # lr 0: the adapter comes back as given; a step: the same A, B trained on from the file's.
    assert main([*common, "--adapter", str(start), "--steps", "1", "--lr", "0",
                 "--out", str(tmp_path / "same")]) == 0
    assert main([*common, "--adapter", str(start), "--steps", "1", "--seed", "5",
                 "--out", str(tmp_path / "on")]) == 0
    # The run's PEFT folder starts the same adapter (the conversion is exact both ways).
    assert main([*common, "--adapter", str(tmp_path / "first" / "peft"), "--steps", "1", "--lr", "0",
                 "--out", str(tmp_path / "from_peft")]) == 0
    same, on = read_gguf(tmp_path / "same" / "adapter.gguf"), read_gguf(tmp_path / "on" / "adapter.gguf")
    from_peft = read_gguf(tmp_path / "from_peft" / "adapter.gguf")
    for name in first.names:
        np.testing.assert_array_equal(same.b[name], first.b[name])
        np.testing.assert_array_equal(from_peft.b[name], first.b[name])
        np.testing.assert_array_equal(on.a[name], first.a[name])
    assert any(not np.array_equal(on.b[n], first.b[n]) for n in first.names)
    saved = json.loads((tmp_path / "on" / "config.json").read_text())
    # The adapter's own shape, its blocks (the last three) included.
    assert [saved["train"][k] for k in ("rank", "alpha", "targets", "num_layers")] == [4, 4.0, ["attn_v"], 3]
    assert saved["source"]["adapter"] == str(start)
    capsys.readouterr()
    assert main([*common, "--adapter", str(start), "--rank", "8", "--out", str(tmp_path / "clash")]) == 2
    assert capsys.readouterr().err.strip() == \
        f"error: --adapter {start} sets the rank, alpha, targets and blocks: drop --rank"
    assert not (tmp_path / "clash").exists()


def test_config_file_with_cli_override(tmp_path):
    cfg = tmp_path / "run.yaml"
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "superb", "label": 1}\n')
    cfg.write_text(f"task: sst2\nvalid: {valid}\nsteps: 1\nbatch-size: 2\nlr: 0.001\n"
                   f"targets: [attn_v]\neval_every: 0\nout: {tmp_path / 'from_file'}\n")
    assert main(["train", "--config", str(cfg), "--lr", "0.002", "--out", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["lr"] == 0.002  # the flag wins over the file
    assert saved["train"]["batch_size"] == 2 and saved["train"]["targets"] == ["attn_v"]
    assert saved["source"]["valid"] == str(valid)
    assert not (tmp_path / "from_file").exists()


def test_num_layers_puts_the_adapter_on_the_last_blocks(tmp_path, capsys):
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "superb", "label": 1}\n')
    common = ["train", "--task", "sst2", "--valid", str(valid), "--steps", "1", "--batch-size", "2",
              "--eval-every", "0"]
    assert main([*common, "--num-layers", "2", "--out", str(tmp_path / "run")]) == 0
    adapter = read_gguf(tmp_path / "run" / "adapter.gguf")
    # SmolLM2-135M has 30 blocks: the last two, each with the default attn_q and attn_v
    assert adapter.names == [f"blk.{i}.{t}.weight" for i in (28, 29) for t in ("attn_q", "attn_v")]
    assert any(np.abs(b).max() > 0 for b in adapter.b.values())  # trained, not only written
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["num_layers"] == 2
    capsys.readouterr()
    assert main([*common, "--num-layers", "31", "--out", str(tmp_path / "too_many")]) == 2
    assert capsys.readouterr().err.strip() == "error: --num-layers: this llama model has 30 blocks, got 31"
    assert not (tmp_path / "too_many").exists()


def test_p_rge_on_a_gpu_takes_a_larger_batch_unless_told(tmp_path):
    from prge_gguf.settings import GPU_ZO_BATCH

    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "superb", "label": 1}\n')

    def batch(name: str, *flags: str) -> int:
        # One step: the settings are resolved and recorded; a CPU-only llama.cpp ignores the offload.
        assert main(["train", "--task", "sst2", "--valid", str(valid), "--steps", "1", "--eval-every", "0",
                     "--out", str(tmp_path / name), *flags]) == 0
        return json.loads((tmp_path / name / "config.json").read_text())["train"]["batch_size"]

    assert batch("cpu") == 16
    assert batch("gpu", "--n-gpu-layers", "-1") == GPU_ZO_BATCH == 64
    assert batch("flag", "--n-gpu-layers", "-1", "--batch-size", "8") == 8


def test_early_stop_keeps_the_best_adapter(engine, tmp_path):
    task = builtin_task("sst2")
    examples = [tokenize_example(engine, e) for e in task.examples(task.dev_file)[:4]]
    # lr 0: nothing improves after the step-0 evaluation, so one stale evaluation stops the run.
    cfg = TrainConfig(steps=10, batch_size=2, lr=0.0, targets=["attn_v"], eval_every=1, early_stop=1,
                      checkpoint_every=0)
    adapter = init_lora_fa(engine.header, cfg.targets, cfg.rank, cfg.alpha, cfg.seed)
    run = RunDir.open_new(tmp_path, {}, adapter)
    train(engine, adapter, examples, examples, cfg, run)
    run.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1]
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 1
    best = read_gguf(tmp_path / "best.gguf")
    assert not any(b.any() for b in best.b.values())  # the step-0 (zero) adapter stayed best


def test_data_folder_with_train_valid_test_splits(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = {"train": [("a joy", 1), ("a bore", 0), ("lovely", 1), ("awful", 0)],
            "valid": [("charming", 1), ("dreadful", 0)], "test": [("superb", 1)]}
    for split, items in rows.items():
        (folder / f"{split}.jsonl").write_text(
            "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in items))
    words = ["--template", "{text} It was", "--label-words", "0=terrible,1=great"]
    out = tmp_path / "run"
    assert main(["train", "--data", str(folder), *words, "--steps", "1", "--batch-size", "2",
                 "--targets", "attn_v", "--eval-every", "0", "--out", str(out)]) == 0
    final = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["eval_n"] == 2  # valid.jsonl is the held-out set while training
    capsys.readouterr()
    assert main(["eval", "--data", str(folder), *words, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 1  # eval reads test.jsonl


def test_cli_training_leaves_torch_unloaded(tmp_path):
    # Installed torch (the torch extra) must not ride in with tensorboardX: ~170 MB of RSS.
    import subprocess
    import sys

    (tmp_path / "v.tsv").write_text("text\tlabel\na masterpiece\t1\n")
    args = ["train", "--task", "sst2", "--steps", "1", "--batch-size", "2",
            "--valid", str(tmp_path / "v.tsv"), "--out", str(tmp_path / "run")]
    script = (f"import sys; from prge_gguf.cli import main; assert main({args!r}) == 0; "
              "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "False"
    assert any((tmp_path / "run" / "tensorboard").iterdir())
