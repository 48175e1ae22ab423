"""The Python API: finetune with a callback, reload the adapter, evaluate it; bad arguments raise
PrgeError with the command line's message."""

import json

import numpy as np
import pytest

import prge_gguf
from prge_gguf import Adapter, PrgeError, TrainConfig, evaluate, export, finetune, generate

ROWS = [{"text": "a joy to watch", "label": 1}, {"text": "tedious", "label": 0},
        {"text": "superb acting", "label": 1}, {"text": "a dull mess", "label": 0}]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_finetune_with_a_callback_then_evaluate_the_adapter(tmp_path, data):
    rows = []
    run = finetune(data=str(data), valid=str(data), out=str(tmp_path / "run"), label_words="0=bad,1=good",
                   steps=3, batch_size=2, targets=["attn_v"], eval_every=3, threads=2, on_metrics=rows.append)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in rows if "eval_loss" in r] == [0, 3]
    assert rows == run.metrics  # the callback saw every row the run logged, as logged
    assert run.config["train"]["steps"] == 3 == TrainConfig(**run.config["train"]).steps
    adapter = Adapter.load(run.adapter_path)
    assert adapter.targets == ["attn_v"] and any(b.any() for b in adapter.b.values())
    m = evaluate(data=str(data), label_words="0=bad,1=good", adapter=str(run.adapter_path), threads=2)
    assert m["n"] == 4 and m["loss"] == pytest.approx(rows[-1]["final_eval_loss"], abs=1e-6)
    # The saved adapter is the trained one: re-saving it writes the same tensors.
    adapter.save(tmp_path / "copy.gguf")
    np.testing.assert_array_equal(Adapter.load(tmp_path / "copy.gguf").b["blk.0.attn_v.weight"],
                                  adapter.b["blk.0.attn_v.weight"])


def test_bad_arguments_raise_one_clear_error(tmp_path, data):
    with pytest.raises(PrgeError, match=r"^unknown setting 'learning_rate' \(expected some of: "):
        finetune(data=str(data), out=str(tmp_path / "a"), learning_rate=0.1)
    with pytest.raises(PrgeError, match=r"^--q must be >= 1$"):
        finetune(task="sst2", out=str(tmp_path / "b"), q=0)
    with pytest.raises(PrgeError, match=r"^unknown setting 'steps'"):
        evaluate(task="sst2", steps=3)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_export_and_generate(tmp_path, model_path):
    from prge_gguf.gguf_header import read_header
    from prge_gguf.lora import init_lora_fa

    adapter = init_lora_fa(read_header(model_path), ["attn_v"], 4, 8, seed=0)
    adapter = adapter.with_b({n: np.full_like(b, 0.01) for n, b in adapter.b.items()})
    adapter.save(tmp_path / "a.gguf")
    peft = export(tmp_path / "a.gguf", "peft", tmp_path / "peft")
    assert sorted(p.name for p in peft.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    back = export(peft, "gguf", tmp_path / "back.gguf")
    name = "blk.0.attn_v.weight"
    np.testing.assert_array_equal(Adapter.load(back).b[name], adapter.b[name])
    with pytest.raises(PrgeError, match=r"^--to onnx: expected one of peft, gguf, merged, ollama$"):
        export(tmp_path / "a.gguf", "onnx", tmp_path / "x")
    with pytest.raises(PrgeError, match=r"is not empty: pass --force"):
        export(tmp_path / "a.gguf", "peft", tmp_path / "peft")
    completions = generate(["The capital of France is"], adapter=str(back), max_tokens=2, threads=2)
    assert len(completions) == 1 and isinstance(completions[0], str)
    with pytest.raises(PrgeError, match=r"^unknown setting 'steps'"):
        generate(["hi"], steps=3)


def test_importing_the_package_loads_no_training_machinery():
    import subprocess
    import sys

    heavy = ("numpy", "llama_cpp", "torch", "prge_gguf.train")
    code = (f"import sys, prge_gguf; assert prge_gguf.__version__; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
    with pytest.raises(AttributeError):
        prge_gguf.no_such_name  # noqa: B018
