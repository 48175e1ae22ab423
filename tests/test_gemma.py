"""The second architecture: Gemma 3 270M Q4_K_M (`--model gemma3-270m`, shipped in PyPI chunks)."""

import json

import pytest
from test_engine import check_llama_cpp_python_reload

from prge_gguf.cli import main
from prge_gguf.models import model_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    from prge_gguf.engine.llama import LlamaEngine

    path = model_path("gemma3-270m")
    with LlamaEngine(path, n_ctx=512, threads=2) as eng:
        yield path, eng


def test_gemma_adapter_reloads_in_llama_cpp_python(gemma, tmp_path):
    path, engine = gemma
    assert engine.header.architecture == "gemma3"
    check_llama_cpp_python_reload(engine, path, tmp_path)


def test_training_gemma_lowers_the_held_out_loss(tmp_path):
    from prge_gguf.tasks import builtin_task

    valid = tmp_path / "valid.tsv"
    valid.write_text("\n".join(builtin_task("sst2").dev_file.read_text().splitlines()[:33]) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--task", "sst2", "--model", "gemma3-270m", "--valid", str(valid), "--steps", "24",
                 "--eval-every", "24", "--eval-size", "0", "--threads", "2", "--n-ctx", "512",
                 "--out", str(out)]) == 0
    train = json.loads((out / "config.json").read_text())["train"]
    assert (train["lr"], train["eps"]) == pytest.approx((1e-3, 2e-2))  # Gemma 3's P-RGE defaults
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 24]
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"] - 0.05, evals
