"""The Python API: `finetune`, `evaluate`, `generate` and `export`, what the `prge-gguf` commands
of those names (`train` for `finetune`) run.

    from prge_gguf import finetune, evaluate
    run = finetune(task="sst2", out="runs/sst2", steps=200, on_metrics=print)
    print(evaluate(task="sst2", adapter=run.adapter_path)["accuracy"])

Settings are the command line's flags as keyword arguments (`batch_size=16`, `n_gpu_layers=-1`).
Bad arguments raise `PrgeError` with the same one-line message the command line prints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prge_gguf.errors import PrgeError
from prge_gguf.models import CHAT_MODEL_HINT
from prge_gguf.settings import check_known, resolve


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
    """Train a LoRA adapter on `model` (a GGUF path or a shipped model's name; default gemma3-270m)
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

    check_known(settings, EVAL_SETTINGS)
    s = resolve({"model": model, "data": data, "adapter": adapter, **settings})
    examples = eval_examples(s)
    with open_engine(s) as engine:
        loaded = read_adapter(str(s.adapter), engine.header) if s.adapter else None
        t0 = time.perf_counter()
        m = evaluate_examples(engine, tokenize_all(engine, examples, s), loaded, s.loss or "label")
        m["seconds"] = time.perf_counter() - t0
    return m


EXPORT_FORMATS = ("peft", "gguf", "merged", "ollama")


def export(adapter: str | Path, to: str, out: str | Path, *, model: str | None = None, force: bool = False,
           merged_type: str = "Q8_0") -> Path:
    """Write `adapter` (a GGUF file or PEFT folder, for the base `model`) as `to`: "peft" (a PEFT
    folder), "gguf" (llama.cpp's adapter file), "merged" (the base GGUF with the adapter in, its
    merged tensors in `merged_type`: Q8_0, F16, ... or "base") or "ollama" (a folder of
    Modelfile + adapter.gguf), as `prge-gguf export` does; returns `out`. `force` replaces an
    existing output (never an input)."""
    from converters.peft import to_peft_for
    from prge_gguf.gguf_header import read_header
    from prge_gguf.inputs import read_adapter
    from prge_gguf.lora import write_gguf
    from prge_gguf.models import model_path
    from prge_gguf.outputs import check_output_file, check_output_folder, replace_folder

    if to not in EXPORT_FORMATS:
        raise PrgeError(f"--to {to}: expected one of {', '.join(EXPORT_FORMATS)}")
    header = read_header(model_path(model))
    inputs = (str(adapter), header.path)
    if to in ("peft", "ollama"):
        out = check_output_folder(out, force=force, inputs=inputs)
    else:
        out = check_output_file(out, force=force, inputs=inputs)
    loaded = read_adapter(str(adapter), header)
    try:
        if to == "peft":
            replace_folder(out, lambda tmp: to_peft_for(loaded, tmp, header))
        elif to == "ollama":
            replace_folder(out, lambda tmp: _write_ollama(tmp, out, loaded, header))
        elif to == "merged":
            from converters.merge import merge

            merge(header.path, loaded, out, merged_type)
        else:
            write_gguf(loaded, out)
    except OSError as exc:
        raise PrgeError(f"--out {out}: cannot write it ({exc.strerror or exc}); nothing was written"
                        ) from None
    return out


def _write_ollama(folder: Path, final: Path, adapter, header) -> None:
    """adapter.gguf and a Modelfile naming it where `folder` will stand, at `final`."""
    from converters.ollama import modelfile
    from prge_gguf.lora import write_gguf

    write_gguf(adapter, folder / "adapter.gguf")
    (folder / "Modelfile").write_text(modelfile(header.path, final / "adapter.gguf", header))


GENERATE_SETTINGS = ("model", "engine", "device", "threads", "n_gpu_layers", "n_ctx")


def generate(prompts: Sequence[str], model: str | None = None, *, adapter: str | None = None,
             chat: bool = False, max_tokens: int = 64, **settings: object) -> list[str]:
    """Greedy completions of `prompts` by `model` (with `adapter`, a GGUF file or PEFT folder), at
    most `max_tokens` each, as `prge-gguf generate` prints them; `chat` sends each prompt as a
    user turn through the model's chat template. Runs on the llama engine."""
    from prge_gguf.inputs import open_engine, read_adapter
    from prge_gguf.lm_data import generation_prompt

    check_known(settings, GENERATE_SETTINGS)
    s = resolve({"model": model, "adapter": adapter, **settings})
    if s.engine != "llama":
        raise PrgeError("generate runs on the llama engine (drop --engine torch)")
    completions = []
    with open_engine(s) as engine:
        adapters = [(read_adapter(s.adapter, engine.header), 1.0)] if s.adapter else []
        for prompt in prompts:
            if chat:
                if not engine.chat_template:
                    raise PrgeError(f"{engine.model_path}: --chat needs a model with tokenizer.chat_template "
                                    f"{CHAT_MODEL_HINT}")
                text = generation_prompt(engine.chat_template, engine.special_tokens(), prompt)
                tokens = engine.tokenize(text, add_special=True, parse_special=True)
            else:
                tokens = engine.tokenize(prompt, add_special=True)
            completions.append(engine.detokenize(engine.generate(tokens, adapters, max_tokens)))
    return completions
