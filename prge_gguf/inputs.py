"""A job's inputs: the engine on the model, the task and its data files, tokenized examples, and
adapters read and checked against the model. Shared by training, evaluation and generation."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from prge_gguf.engine.base import Engine
from prge_gguf.errors import PrgeError
from prge_gguf.gguf_header import GGUFHeader
from prge_gguf.lora import LoraAdapter, base_fingerprint
from prge_gguf.models import model_path
from prge_gguf.settings import DEFAULT_TEMPLATE, MAX_N_CTX, Settings
from prge_gguf.tasks import Task


def open_engine(s: Settings) -> Engine:
    """The engine of `s.engine` on `s.model` (loaded now; the context is made at the first decode)."""
    n_ctx = s.n_ctx or MAX_N_CTX
    if s.engine == "torch":
        from prge_gguf.engine.torch_engine import TorchEngine

        return TorchEngine(model_path(s.model), device=s.device, n_ctx=n_ctx, threads=s.threads)
    from prge_gguf.engine.llama import LlamaEngine

    return LlamaEngine(model_path(s.model), n_ctx=n_ctx, threads=s.threads,
                       n_gpu_layers=s.n_gpu_layers, parallel=s.parallel, routing=bool(s.routing))


def task_of(s: Settings) -> Task:
    """The built-in task of --task, or one made of --template and --label-words; either flag
    given with --task replaces that part of the task."""
    from prge_gguf.data import check_template, parse_label_words, unescape_template
    from prge_gguf.tasks import builtin_task

    if not (s.task or s.data):
        raise PrgeError("pass --task NAME or --data FILE")
    label_words = parse_label_words(s.label_words) if s.label_words else None
    template = check_template(unescape_template(s.template)) if s.template else None
    if not s.task:
        return Task("custom", template or DEFAULT_TEMPLATE, label_words,
                    classify=bool(template or label_words))
    task = builtin_task(s.task)
    if template:
        task = dataclasses.replace(task, template=template)
    return dataclasses.replace(task, label_words=label_words) if label_words else task


def data_files(s: Settings, task: Task) -> dict[str, Path | None]:
    """train / valid / test files: --data FILE or a --data DIR holding {train,valid,test}.jsonl
    (MLX-LM's layout), else the task's shipped files; --valid overrides."""
    files: dict[str, Path | None] = {"train": task.train_file, "valid": task.dev_file, "test": None}
    if s.data and Path(s.data).is_dir():
        folder = Path(s.data)
        files = {k: folder / f"{k}.jsonl" if (folder / f"{k}.jsonl").is_file() else None for k in files}
        if files["train"] is None:
            raise PrgeError(f"{folder}: no train.jsonl in this data folder")
    elif s.data:
        files["train"] = Path(s.data)
    if s.valid:
        files["valid"] = Path(s.valid)
    return files


def datasets(s: Settings) -> tuple[list, list]:
    """(train examples, held-out examples) from --task and/or --data/--valid."""
    task = task_of(s)
    files = data_files(s, task)
    if files["train"] is None:
        raise PrgeError(f"--task {task.name} ships no data: pass --data TRAIN.jsonl (and --valid)")
    held_out = files["valid"]
    return task.examples(files["train"]), task.examples(held_out) if held_out else []


def eval_examples(s: Settings) -> list:
    """The examples `eval` scores: --valid, else a data folder's test (or valid) split, else the
    --data file, else the task's dev set; the first `s.limit` of them where that is set."""
    task = task_of(s)
    files = data_files(s, task)
    if s.valid or not s.data:
        source = files["valid"]
    elif Path(s.data).is_dir():
        source = files["test"] or files["valid"]
    else:
        source = files["train"]
    if source is None:
        raise PrgeError(f"--task {task.name} ships no data: pass --data FILE to evaluate")
    examples = task.examples(Path(source))
    return examples[: s.limit] if s.limit else examples


def tokenize_all(engine: Engine, examples: list, s: Settings) -> list:
    """Tokenize; sequences over --max-seq-len stop with an error naming the record, or are cut."""
    from prge_gguf.data import fit_length
    from prge_gguf.tasks import tokenize

    max_len = s.max_seq_len or engine.n_ctx
    if max_len > engine.n_ctx:
        raise PrgeError(f"--max-seq-len {max_len} is larger than --n-ctx {engine.n_ctx}")
    out, cut = [], 0
    for ex in examples:
        tok = tokenize(engine, ex)
        if tok.longest > max_len:
            if not s.truncate:
                raise PrgeError(f"{tok.place}: {tok.longest} tokens, more than --max-seq-len {max_len} "
                                "(pass --truncate to cut such sequences, or raise --max-seq-len/--n-ctx)")
            tok, cut = fit_length(tok, max_len), cut + 1
        out.append(tok)
    if cut:
        print(f"warning: cut {cut} of {len(examples)} examples to {max_len} tokens (--truncate)",
              file=sys.stderr)
    return out


def describe(m: dict) -> str:
    """An evaluation's numbers in one line."""
    acc = f"accuracy {m['accuracy']:.4f}, " if m["accuracy"] is not None else ""
    picks = f" (predicted options: {' / '.join(map(str, m['predicted']))})" if m["predicted"] else ""
    return f"{acc}loss {m['loss']:.4f} on {m['n']} examples{picks}"


def check_base(adapter: LoraAdapter, header: GGUFHeader, path: str) -> None:
    """Refuse an adapter whose recorded base-model fingerprint is not this model's, or (adapters
    from elsewhere record none) whose tensors do not fit this model's weights."""
    base = base_fingerprint(header)
    if adapter.architecture != header.architecture:
        raise PrgeError(f"{path}: adapter is for a {adapter.architecture} model, this model is "
                        f"{header.architecture}: an adapter for another model")
    if adapter.fingerprint and adapter.fingerprint != base:
        raise PrgeError(f"{path}: adapter was trained for another base model "
                        f"(fingerprint {adapter.fingerprint}, this model {base})")
    for name in adapter.names:
        info = header.tensors.get(name)
        # (out, in) or (experts, out, in), as the header's shape
        needs = (*adapter.b[name].shape[:-1], adapter.a[name].shape[-1])
        if info is None or tuple(info.shape) != needs:
            has = f"shape {tuple(info.shape)}" if info else "no such weight"
            raise PrgeError(f"{path}: adapter tensor {name} needs a weight of shape {needs}, this model "
                            f"has {has}: an adapter for another model")


def read_adapter(path: str, header: GGUFHeader) -> LoraAdapter:
    """A GGUF LoRA adapter file or a PEFT folder (read for the model of `header`), checked
    against that model."""
    from converters.peft import from_peft
    from prge_gguf.lora import read_gguf

    if Path(path).is_dir():
        n_head, n_head_kv = header.head_counts
        adapter = from_peft(path, architecture=header.architecture, n_head=n_head, n_head_kv=n_head_kv,
                            fused_qkv=any(n.endswith(".attn_qkv.weight") for n in header.tensors))
    else:
        adapter = read_gguf(path)
    check_base(adapter, header, path)
    return adapter
