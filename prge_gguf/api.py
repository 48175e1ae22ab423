"""The Python API: `finetune` and `evaluate`, what `prge-gguf train` and `prge-gguf eval` run.

    from prge_gguf import finetune, evaluate
    run = finetune(task="sst2", out="runs/sst2", steps=200, on_metrics=print)
    print(evaluate(task="sst2", adapter=run.adapter_path)["accuracy"])

Settings are the command line's flags as keyword arguments (`batch_size=16`, `n_gpu_layers=-1`).
Bad arguments raise `PrgeError` with the same one-line message the command line prints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prge_gguf.errors import PrgeError
from prge_gguf.settings import resolve


@dataclass(frozen=True)
class Run:
    """A finished (or stopped) training run's folder and what it holds."""

    path: Path

    @property
    def adapter_path(self) -> Path:
        """The trained adapter, in llama.cpp's GGUF layout."""
        return self.path / "adapter.gguf"

    @property
    def config(self) -> dict:
        """The resolved settings the run trained with (config.json)."""
        return json.loads((self.path / "config.json").read_text())

    @property
    def metrics(self) -> list[dict]:
        """Every row the run logged (metrics.jsonl): steps, evaluations, the final evaluation."""
        lines = (self.path / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def finetune(model: str | None = None, data: str | None = None, out: str | None = None, *,
             on_metrics: Callable[[dict], None] | None = None, **settings: object) -> Run:
    """Train a LoRA adapter on `model` (a GGUF path or a shipped model's name; default SmolLM2)
    with `data` into the run folder `out`, as `prge-gguf train` does; `resume="RUN_DIR"` goes on
    with a run instead. Every row the run logs is passed to `on_metrics` as it is written."""
    from prge_gguf.job import run_training

    given = {"model": model, "data": data, "out": out, **settings}
    return Run(run_training(resolve(given), on_metrics))


EVAL_SETTINGS = ("task", "data", "valid", "template", "label_words", "model", "engine", "device", "threads",
                  "n_gpu_layers", "n_ctx", "max_seq_len", "truncate", "adapter", "loss", "limit")


def evaluate(model: str | None = None, data: str | None = None, *, adapter: str | None = None,
             **settings: object) -> dict:
    """Loss and accuracy of `model` (with `adapter`, a GGUF file or PEFT folder) on `data` or a
    task's held-out set, as `prge-gguf eval` computes them: {"loss", "accuracy", "n",
    "predicted" (how often each option was picked), "seconds"}."""
    from prge_gguf.inputs import eval_examples, open_engine, read_adapter, tokenize_all
    from prge_gguf.train import evaluate as evaluate_examples

    if unknown := sorted(set(settings) - set(EVAL_SETTINGS)):
        raise PrgeError(f"unknown setting '{unknown[0]}' (expected some of: {', '.join(EVAL_SETTINGS)})")
    s = resolve({"model": model, "data": data, "adapter": adapter, **settings})
    examples = eval_examples(s)
    with open_engine(s) as engine:
        loaded = read_adapter(str(s.adapter), engine.header) if s.adapter else None
        t0 = time.perf_counter()
        m = evaluate_examples(engine, tokenize_all(engine, examples, s), loaded, s.loss or "label")
        m["seconds"] = time.perf_counter() - t0
    return m
