"""Built-in SuperGLUE tasks on the real benchmark files (../shared/data, read-only test input)."""

from pathlib import Path

import numpy as np
import pytest

from prge_gguf.cli import main
from prge_gguf.data import tokenize_example
from prge_gguf.tasks import builtin_task
from prge_gguf.train import evaluate

SUPERGLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "superglue"
needs_data = pytest.mark.skipif(not SUPERGLUE.is_dir(), reason="../shared/data not present")

SIZES = {"rte": (277, 2), "cb": (56, 3), "copa": (100, 2), "wic": (638, 2)}


@needs_data
@pytest.mark.parametrize("name", sorted(SIZES))
def test_superglue_validation_files_render(name):
    task = builtin_task(name)
    folder = SUPERGLUE / name.upper() if name != "wic" else SUPERGLUE / "WiC"
    examples = task.examples(folder / "val.jsonl")
    n, k = SIZES[name]
    assert len(examples) == n
    assert all(len(e.options) == k and 0 <= e.label < k for e in examples)
    assert len({e.label for e in examples}) == k  # every class occurs


@needs_data
def test_copa_options_are_the_choices():
    ex = builtin_task("copa").examples(SUPERGLUE / "COPA" / "val.jsonl")[0]
    assert ex.context == "The man turned on the faucet so"
    assert ex.options == (" the toilet filled with water.", " water flowed from the spout.")
    assert ex.label == 1


@needs_data
@pytest.mark.slow
def test_multi_token_options_score_and_train(engine, tmp_path):
    task = builtin_task("copa")
    examples = [tokenize_example(engine, e) for e in task.examples(SUPERGLUE / "COPA" / "val.jsonl")[:6]]
    assert all(len(t.requests) == 2 for t in examples)  # one sequence per multi-token choice
    m = evaluate(engine, examples, None, "label")
    assert 0 <= m["accuracy"] <= 1 and np.isfinite(m["loss"])
    out = tmp_path / "run"
    code = main(["train", "--task", "copa", "--data", str(SUPERGLUE / "COPA" / "train.jsonl"),
                 "--valid", str(SUPERGLUE / "COPA" / "val.jsonl"), "--steps", "2", "--batch-size", "2",
                 "--targets", "attn_v", "--eval-every", "0", "--out", str(out)])
    assert code == 0 and (out / "adapter.gguf").exists()


def test_task_without_data_needs_data(capsys):
    assert main(["eval", "--task", "rte"]) == 2
    assert capsys.readouterr().err.strip() == "error: --task rte ships no data: pass --data FILE to evaluate"


def test_template_and_label_words_replace_the_tasks():
    from prge_gguf.cli import build_parser
    from prge_gguf.inputs import task_of as _task

    args = build_parser().parse_args(["eval", "--task", "sst2", "--template", r"Review: {text}\nSentiment:",
                                      "--label-words", "0=negative,1=positive"])
    task = _task(args)
    assert task.template == "Review: {text}\nSentiment:"
    assert task.label_words == {"0": "negative", "1": "positive"}
    assert task.train_file == builtin_task("sst2").train_file  # the task's data stays
    assert _task(build_parser().parse_args(["eval", "--task", "sst2"])) == builtin_task("sst2")
