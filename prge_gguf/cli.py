"""Command line: argument parsing and wiring only. Defaults live in TrainConfig."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter
from pathlib import Path

from prge_gguf import __version__
from prge_gguf.errors import PrgeError
from prge_gguf.estimators import ESTIMATORS
from prge_gguf.lora import ALL_TARGETS, DEFAULT_TARGETS, base_fingerprint, target_shapes
from prge_gguf.optim import DEFAULT_LR, OPTIMIZERS, ZEROTH_ORDER, architecture_defaults

# The context of eval and generate, and the longest sequence allowed unless --max-seq-len or
# --n-ctx say otherwise.
MAX_N_CTX = 1024
# The most tokens train fits its decodes to. A decode attends over all its tokens (its sequences
# masked from one another), so a smaller one spends less on attention and more on passes over the
# weights. On this 2-core CPU, RTE at batch 16 stepped 4-11% faster at 320-768 tokens than at 1024
# (bench/decode_size_cpu.md); on an H100 at batch 64, 1536 or 2048 stepped 10-28% faster than the
# fits up to 4096 on RTE, CB, WiC and COPA, 1536 as fast as 2048 or faster (bench/NOTES.md, session 12).
CPU_MAX_N_CTX = 768
GPU_MAX_N_CTX = 1536
# On a GPU, P-RGE's defaults change: a step's decodes take about as long at 64 examples as at 16,
# and at 16 the estimate's noise is mostly the minibatch's (bench/grad_noise.md), so a larger
# batch is accuracy almost for free (bench/sweeps/batch-gpu.md: SST-2 validation 0.77 -> 0.82 in
# the same minutes).
GPU_ZO_BATCH = 64
DEFAULT_TEMPLATE = "{text}"
_CFG_FLAGS = ("steps", "batch_size", "q", "eps", "lr", "lr_schedule", "weight_decay", "loss", "optimizer",
              "estimator", "train_a", "seed", "rank", "alpha", "targets", "num_layers", "eval_every",
              "eval_size", "checkpoint_every", "early_stop")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="base model: a GGUF file, or smollm2-135m (default: SmolLM2-135M-Instruct "
                                   "Q4_1, shipped) or gemma3-270m (Gemma 3 270M Q4_K_M, the gemma extra)")
    p.add_argument("--threads", type=int, help="CPU threads for llama.cpp (default: all cores, max 8)")
    p.add_argument("--n-gpu-layers", type=int, help="layers offloaded to GPU (-1 = all; default 0)")
    p.add_argument("--engine", choices=("llama", "torch"),
                   help="llama: llama.cpp on the quantized GGUF (default); torch: the same GGUF "
                        "dequantized in transformers (reference; needs the torch extra)")
    p.add_argument("--device", help="torch engine device: cpu (default), cuda, mps")
    p.add_argument("--n-ctx", type=int,
                   help=f"tokens per decode (context size; default: train fits it to a typical batch, at"
                        f" most {CPU_MAX_N_CTX} ({GPU_MAX_N_CTX} on a GPU); other commands {MAX_N_CTX})")
    p.add_argument("--max-seq-len", type=int, help="longest sequence in tokens (default: --n-ctx, or 1024)")
    p.add_argument("--truncate", action="store_true", default=None,
                   help="cut longer sequences (with a count) instead of stopping with an error")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help="built-in task: sst2 (data shipped; sst2-mezo: the same with MeZO's "
                                  "prompt), rte, cb, copa, wic (bring --data)")
    p.add_argument("--data", help="training data: JSONL of {'text': ..., 'label': ...} (or 'options': "
                                  "[...] with 'label' an index), or TSV with a header; with --task, "
                                  "that task's fields")
    p.add_argument("--valid", help="held-out data (same format; with --task it replaces the task's dev set)")
    p.add_argument("--template", help="prompt template over record fields, \\n for a newline (default "
                                      "'{text}'; with --task, replaces the task's)")
    p.add_argument("--label-words", help="label words, e.g. '0=terrible,1=great' (joined with a space; "
                                         "with --task, replaces the task's)")


def build_parser() -> argparse.ArgumentParser:
    """The `prge-gguf` argument parser."""
    parser = argparse.ArgumentParser(prog="prge-gguf", description=__doc__)
    parser.add_argument("--version", action="version", version=f"prge-gguf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="fine-tune a LoRA adapter with P-RGE",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="estimators (--estimator NAME; default prge):\n" + "\n".join(
                            f"  {name:<9} {summary}" for name, (summary, _) in ESTIMATORS.items()))
    _add_model_args(tr)
    _add_data_args(tr)
    tr.add_argument("--out", help="run folder (adapter.gguf, config.json, metrics.jsonl, checkpoint)")
    tr.add_argument("--force", action="store_true",
                    help="write the run into a folder that holds other files (never over a run or an input)")
    tr.add_argument("--config", help="YAML file of settings (flag names as keys); flags override it")
    tr.add_argument("--resume", metavar="RUN_DIR",
                    help="continue the run in RUN_DIR from its last checkpoint, with its saved settings "
                         "(--threads, --n-gpu-layers, --device, --parallel: as saved unless given; "
                         "--steps N extends it to N steps)")
    tr.add_argument("--adapter", metavar="FILE|DIR",
                    help="start from this LoRA adapter (a GGUF file: a run's adapter.gguf or best.gguf, "
                         "one llama.cpp converted; or a PEFT folder) instead of a fresh one: its rank, "
                         "alpha, targets and A come with it, and training goes on from its B (MLX-LM's "
                         "--resume-adapter-file)")
    tr.add_argument("--steps", type=int, help="P-RGE steps")
    tr.add_argument("--batch-size", type=int, help=f"examples per step (default 16; P-RGE on a GPU "
                                                   f"{GPU_ZO_BATCH})")
    tr.add_argument("--q", type=int, help="random directions (queries) per step")
    tr.add_argument("--eps", type=float, help="perturbation scale (default 0.05; Gemma 3 models 0.02)")
    tr.add_argument("--lr", type=float, help="learning rate (default by --optimizer: "
                    + ", ".join(f"{opt} {lr:g}" for opt, lr in DEFAULT_LR.items())
                    + "; zo and zo-momentum on Gemma 3 models 1/20 of that)")
    tr.add_argument("--lr-schedule", choices=("constant", "linear"), help="learning-rate schedule")
    tr.add_argument("--weight-decay", type=float,
                    help="zo, sgd: L2 (wd * the tensor added to its gradient); adam: decoupled (AdamW)")
    tr.add_argument("--loss", choices=("label", "vocab"),
                    help="label: CE over label words (default); vocab: full-vocabulary token CE")
    tr.add_argument("--optimizer", choices=OPTIMIZERS,
                    help="zo: P-RGE (default); zo-momentum, zo-adam: P-RGE's estimate through "
                         "momentum or AdamW; sgd, adam: first-order by backprop, a baseline (--engine torch)")
    tr.add_argument("--estimator", metavar="NAME",
                    help="zo optimizers' gradient estimate: " + ", ".join(ESTIMATORS) + " (listed below)")
    tr.add_argument("--train-a", action="store_true", default=None,
                    help="sgd/adam: train A too (full LoRA); by default only B (LoRA-FA, as P-RGE)")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--rank", type=int, help="LoRA rank r")
    tr.add_argument("--alpha", type=float, help="LoRA alpha (scale alpha/r)")
    tr.add_argument("--targets", type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
                    help=f"comma-separated projections of {','.join(ALL_TARGETS)} "
                         f"(default: {','.join(DEFAULT_TARGETS)}; attn_qkv where q, k, v are fused)")
    tr.add_argument("--num-layers", type=int,
                    help="put the adapter on the last N blocks only, as MLX-LM's --num-layers (default: all)")
    tr.add_argument("--eval-every", type=int, help="steps between evaluations (0 = none)")
    tr.add_argument("--eval-size", type=int, help="held-out examples per evaluation (0 = all)")
    tr.add_argument("--checkpoint-every", type=int, help="steps between resumable checkpoints")
    tr.add_argument("--early-stop", type=int, metavar="N",
                    help="stop after N evaluations without a better held-out score (best.gguf: the best)")
    tr.add_argument("--parallel", type=int, metavar="K",
                    help="llama.cpp contexts that score a step's 2q perturbations at once, each with one "
                         "adapter, from K threads; the CPU threads are shared out among them (default: "
                         "8 with --n-gpu-layers; on the CPU one per 2 threads, at most 8)")
    tr.add_argument("--distributed", action="store_true",
                    help="one rank of a job started by 'torchrun --nproc_per_node N -m prge_gguf train "
                         "... --distributed': the ranks share each step's perturbations (needs torch)")

    ev = sub.add_parser("eval", help="accuracy and loss of the model, with or without an adapter")
    _add_model_args(ev)
    _add_data_args(ev)
    ev.add_argument("--adapter", help="LoRA adapter to apply: a GGUF file or a PEFT folder")
    ev.add_argument("--loss", choices=("label", "vocab"), default="label")
    ev.add_argument("--limit", type=int, help="evaluate only the first N examples")
    ev.add_argument("--json", action="store_true", help="print one JSON object")

    gen = sub.add_parser("generate", help="greedy completions of prompts, with or without an adapter")
    _add_model_args(gen)
    gen.add_argument("--adapter", help="LoRA adapter to apply: a GGUF file or a PEFT folder")
    gen.add_argument("--prompt", action="append", required=True,
                     help="a prompt (repeatable); \\n for a newline, as in --template")
    gen.add_argument("--max-tokens", type=int, help="tokens to generate at most (default 64)")
    gen.add_argument("--chat", action="store_true", help="send each prompt as a user turn (chat template)")

    ex = sub.add_parser("export", help="convert an adapter: GGUF <-> PEFT folder, or merge it")
    ex.add_argument("adapter", help="a GGUF LoRA adapter, or a PEFT folder")
    ex.add_argument("--to", choices=("peft", "gguf", "merged", "ollama"), required=True,
                    help="peft: PEFT folder; gguf: llama.cpp adapter; merged: base model with the adapter "
                         "in; ollama: a folder of Modelfile + adapter.gguf for 'ollama create NAME -f "
                         "DIR/Modelfile'")
    ex.add_argument("--out", required=True, help="output folder (peft, ollama) or .gguf file")
    ex.add_argument("--force", action="store_true", help="replace an existing output (never an input)")
    ex.add_argument("--type", default="Q8_0",
                    help="merged tensors' type: Q8_0 (default), F16, Q4_0, ... or base (keep each type)")
    ex.add_argument("--model", help="its base model GGUF (default: the shipped SmolLM2 model)")

    pl = sub.add_parser("plot", help="training curves of a run folder as a PNG")
    pl.add_argument("run_dir", help="run folder written by 'prge-gguf train'")
    pl.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")

    info = sub.add_parser("info", help="architecture, quant types and target tensors of a GGUF")
    info.add_argument("model", nargs="?", help="GGUF file (default: the shipped SmolLM2 model)")
    return parser


def _model_path(arg: str | None) -> Path:
    from prge_gguf.models import model_path

    return model_path(arg)


def _open_engine(args: argparse.Namespace):
    n_ctx = args.n_ctx or MAX_N_CTX
    if args.engine == "torch":
        from prge_gguf.engine.torch_engine import TorchEngine

        return TorchEngine(_model_path(args.model), device=args.device, n_ctx=n_ctx, threads=args.threads)
    from prge_gguf.engine.llama import LlamaEngine

    return LlamaEngine(_model_path(args.model), n_ctx=n_ctx, threads=args.threads,
                       n_gpu_layers=args.n_gpu_layers, parallel=getattr(args, "parallel", None))


def _on_gpu(args: argparse.Namespace) -> bool:
    """Whether the engine computes on a GPU: llama.cpp with layers offloaded, torch off the CPU."""
    if args.engine == "torch":
        return args.device != "cpu"
    return args.n_gpu_layers != 0


def _task(args: argparse.Namespace):
    """The built-in task of --task, or one made of --template and --label-words; either flag
    given with --task replaces that part of the task."""
    from prge_gguf.data import check_template, parse_label_words, unescape_template
    from prge_gguf.tasks import Task, builtin_task

    if not (args.task or args.data):
        raise PrgeError("pass --task NAME or --data FILE")
    label_words = parse_label_words(args.label_words) if args.label_words else None
    template = check_template(unescape_template(args.template)) if args.template else None
    if not args.task:
        return Task("custom", template or DEFAULT_TEMPLATE, label_words,
                    classify=bool(template or label_words))
    task = builtin_task(args.task)
    if template:
        task = dataclasses.replace(task, template=template)
    return dataclasses.replace(task, label_words=label_words) if label_words else task


def _data_files(args: argparse.Namespace, task) -> dict[str, Path | None]:
    """train / valid / test files: --data FILE or a --data DIR holding {train,valid,test}.jsonl
    (MLX-LM's layout), else the task's shipped files; --valid overrides."""
    files: dict[str, Path | None] = {"train": task.train_file, "valid": task.dev_file, "test": None}
    if args.data and Path(args.data).is_dir():
        folder = Path(args.data)
        files = {k: folder / f"{k}.jsonl" if (folder / f"{k}.jsonl").is_file() else None for k in files}
        if files["train"] is None:
            raise PrgeError(f"{folder}: no train.jsonl in this data folder")
    elif args.data:
        files["train"] = Path(args.data)
    if args.valid:
        files["valid"] = Path(args.valid)
    return files


def _datasets(args: argparse.Namespace):
    """(train examples, held-out examples) from --task and/or --data/--valid."""
    task = _task(args)
    files = _data_files(args, task)
    if files["train"] is None:
        raise PrgeError(f"--task {task.name} ships no data: pass --data TRAIN.jsonl (and --valid)")
    held_out = files["valid"]
    return task.examples(files["train"]), task.examples(held_out) if held_out else []


_SOURCE_KEYS = ("task", "data", "valid", "template", "label_words", "model", "n_ctx", "max_seq_len",
                "truncate", "engine", "adapter")
# Defaults of the non-training flags (training defaults live in TrainConfig), applied after --config.
_DEFAULTS = {"n_gpu_layers": 0, "max_tokens": 64,
             "engine": "llama", "device": "cpu"}
# Where a run computes: saved with it, and a resumed run keeps them unless its command line says otherwise.
_MACHINE_KEYS = ("threads", "n_gpu_layers", "device", "parallel")
_FILE_KEYS = (*_CFG_FLAGS, *_SOURCE_KEYS, "out", *_MACHINE_KEYS)


def _tokenize_all(engine, examples: list, args: argparse.Namespace) -> list:
    """Tokenize; sequences over --max-seq-len stop with an error naming the record, or are cut."""
    from prge_gguf.data import fit_length
    from prge_gguf.tasks import tokenize

    max_len = args.max_seq_len or engine.n_ctx
    if max_len > engine.n_ctx:
        raise PrgeError(f"--max-seq-len {max_len} is larger than --n-ctx {engine.n_ctx}")
    out, cut = [], 0
    for ex in examples:
        tok = tokenize(engine, ex)
        if tok.longest > max_len:
            if not args.truncate:
                raise PrgeError(f"{tok.place}: {tok.longest} tokens, more than --max-seq-len {max_len} "
                                "(pass --truncate to cut such sequences, or raise --max-seq-len/--n-ctx)")
            tok, cut = fit_length(tok, max_len), cut + 1
        out.append(tok)
    if cut:
        print(f"warning: cut {cut} of {len(examples)} examples to {max_len} tokens (--truncate)",
              file=sys.stderr)
    return out


def _describe(m: dict) -> str:
    acc = f"accuracy {m['accuracy']:.4f}, " if m["accuracy"] is not None else ""
    picks = f" (predicted options: {' / '.join(map(str, m['predicted']))})" if m["predicted"] else ""
    return f"{acc}loss {m['loss']:.4f} on {m['n']} examples{picks}"


def _check_base(adapter, header, path: str) -> None:
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


def _read_adapter(path: str, header):
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
    _check_base(adapter, header, path)
    return adapter


def _start_adapter(path: str, header, overrides: dict):
    """The adapter `train --adapter` starts from; its shape settings are its own, not flags'."""
    shape_flags = ("rank", "alpha", "targets", "num_layers")
    if given := [f"--{f.replace('_', '-')}" for f in shape_flags if f in overrides]:
        raise PrgeError(f"--adapter {path} sets the rank, alpha, targets and blocks: drop {', '.join(given)}")
    return _read_adapter(path, header)


# What a resumed run keeps from its start; --steps may change (it extends the run), and where it
# computes (_MACHINE_KEYS) may too.
_RUN_KEYS = (*(f for f in _CFG_FLAGS if f != "steps"), *_SOURCE_KEYS)


def _check_resume_flags(args: argparse.Namespace, saved: dict) -> None:
    """Refuse a setting given with --resume that differs from the run's saved one, naming it."""
    from prge_gguf.train import TrainConfig

    if args.out:
        raise PrgeError("--resume continues the run in its own folder: drop --out")
    for key in _RUN_KEYS:
        if key not in args.given:
            continue
        section = saved.get("train" if key in _CFG_FLAGS else "source", {})
        # A key an older run did not record had its default then.
        given, kept = getattr(args, key), section.get(key, getattr(TrainConfig, key, None))
        if key == "model":
            given, kept = str(_model_path(given)), str(kept)
        if given != kept:
            flag = "--" + key.replace("_", "-")
            raise PrgeError(f"{flag}: a resumed run keeps its saved setting ({kept!r}); drop {flag}, "
                            "or start a new run with --out")


def cmd_train(args: argparse.Namespace) -> int:
    """`prge-gguf train`: a new run in --out, or --resume one."""
    from prge_gguf.distributed import Workers

    workers = Workers.join() if args.distributed else Workers()
    try:
        return _train_as(workers, args)
    finally:
        workers.close()


def _train_as(workers, args: argparse.Namespace) -> int:
    """`prge-gguf train` on one rank (of one, or of a distributed job); rank 0 writes the run."""
    from converters.peft import peft_unnamed
    from prge_gguf.data import decode_size
    from prge_gguf.gguf_header import read_header
    from prge_gguf.lora import check_rank, default_targets, init_lora_fa, num_layers_of, untargeted
    from prge_gguf.memory import check_fits, train_bytes
    from prge_gguf.outputs import check_run_folder
    from prge_gguf.run_dir import RunDir
    from prge_gguf.train import TrainConfig, config_record, evaluate, train

    say = print if workers.is_main else lambda *a, **k: None
    if args.resume:
        if args.adapter:
            raise PrgeError("--resume continues a run from its checkpoint; --adapter starts a new one: "
                            "drop one of them")
        _check_resume_flags(args, RunDir.saved_config(Path(args.resume)))  # before the folder is touched
        run, saved, start_step, adapter, optimizer_state = RunDir.open_resume(
            Path(args.resume), writable=workers.is_main)
        if "steps" in args.given and args.steps < start_step:
            raise PrgeError(f"--steps {args.steps}: the run's checkpoint is at step {start_step} already")
        if "steps" in args.given and args.steps != saved["train"]["steps"]:
            saved["train"]["steps"] = args.steps
            run.rewrite_config(saved)
        cfg = TrainConfig(**saved["train"])
        vars(args).update(saved["source"])
    else:
        if not args.out:
            raise PrgeError("train needs --out RUN_DIR (or --resume RUN_DIR)")
        # Fail before the model loads.
        check_run_folder(args.out, force=args.force,
                         inputs=(args.adapter, args.data, args.valid, getattr(args, "config", None)))
        overrides = {f: getattr(args, f) for f in _CFG_FLAGS if getattr(args, f) is not None}
        header = read_header(_model_path(args.model))
        optimizer = overrides.get("optimizer", TrainConfig.optimizer)
        tuned = architecture_defaults(header.architecture, optimizer) | {"targets": default_targets(header)}
        if _on_gpu(args) and optimizer in ZEROTH_ORDER:
            tuned["batch_size"] = GPU_ZO_BATCH
        adapter = _start_adapter(args.adapter, header, overrides) if args.adapter else None
        if adapter is not None:
            overrides |= {"rank": adapter.rank, "alpha": adapter.alpha, "targets": adapter.targets,
                          "num_layers": num_layers_of(adapter, header)}
        cfg, run, start_step, optimizer_state = TrainConfig(**tuned | overrides), None, 0, {}
        shapes = check_rank(header, cfg.targets, cfg.rank, cfg.num_layers)
        n_ctx = args.n_ctx or (GPU_MAX_N_CTX if _on_gpu(args) else CPU_MAX_N_CTX)
        check_fits(train_bytes(header, shapes, cfg.rank, cfg.q, n_ctx))
    if workers.size > 1 and cfg.optimizer not in ZEROTH_ORDER:
        raise PrgeError("--distributed shares P-RGE's loss values: use --optimizer "
                        + " or ".join(ZEROTH_ORDER))
    if workers.size > 2 * cfg.q:
        say(f"warning: {workers.size} ranks share {2 * cfg.q} perturbations a step; ranks "
            f"{2 * cfg.q}..{workers.size - 1} only evaluate (raise --q to use them)", file=sys.stderr)
    train_ex, eval_ex = _datasets(args)
    if cfg.batch_size > len(train_ex):
        raise PrgeError(f"--batch-size {cfg.batch_size} is more than the {len(train_ex)} training examples: "
                        f"lower it (at most {len(train_ex)})")
    with _open_engine(args) as engine:
        # Everything that can fail on input happens before the run folder is made.
        if cfg.optimizer not in ZEROTH_ORDER and not hasattr(engine, "loss_gradient"):
            raise PrgeError(f"--optimizer {cfg.optimizer} needs backpropagation: use --engine torch")
        if adapter is None:
            adapter = init_lora_fa(engine.header, cfg.targets, cfg.rank, cfg.alpha, cfg.seed, cfg.num_layers)
        elif args.resume:
            _check_base(adapter, engine.header, args.resume)
        if others := untargeted(engine.header):
            say(f"note: the adapter covers {', '.join(adapter.targets)}; not {', '.join(others)}",
                file=sys.stderr)
        if unnamed := peft_unnamed(adapter):
            more = f" (and {len(unnamed) - 1} more)" if len(unnamed) > 1 else ""
            say(f"warning: no PEFT module for {unnamed[0]}{more}: this run writes adapter.gguf only, "
                "no peft/ folder ('prge-gguf export' cannot convert it either)", file=sys.stderr)
        train_tok = _tokenize_all(engine, train_ex, args)
        eval_tok = _tokenize_all(engine, eval_ex, args)
        if not args.n_ctx:  # before the first decode: the KV cache is sized by it
            cap = GPU_MAX_N_CTX if _on_gpu(args) else CPU_MAX_N_CTX
            engine.set_context(decode_size(train_tok, eval_tok, cfg.batch_size, cap))
        if args.adapter and not args.resume:
            # The engine checks an adapter fully only when it first applies it (llama.cpp, e.g., takes
            # token_embd in another layout): one example now, so that a refusal leaves no run folder.
            engine.score(train_tok[0].requests, [(adapter, 1.0)])
        if run is None:
            source = {k: getattr(args, k) for k in _SOURCE_KEYS} | {"model": str(engine.model_path)}
            record = config_record(cfg, source=source, base_fingerprint=adapter.fingerprint,
                                   machine={k: getattr(args, k) for k in _MACHINE_KEYS}, version=__version__)
            run = RunDir.open_new(Path(args.out), record, adapter) if workers.is_main \
                else RunDir(Path(args.out), writable=False)
        if not eval_tok:
            say("note: no held-out data (--valid): no evaluation during training, and no best.gguf",
                file=sys.stderr)
        t0 = time.perf_counter()

        def on_eval(step: int, m: dict) -> None:
            from tqdm import tqdm

            if workers.is_main:
                tqdm.write(f"step {step}: eval {_describe(m)}")

        try:
            adapter = train(engine, adapter, train_tok, eval_tok, cfg, run, on_eval, start_step, workers,
                            optimizer_state)
            train_s = time.perf_counter() - t0
            if eval_tok:
                final = evaluate(engine, eval_tok, adapter, cfg.loss, workers)
                run.metrics({"step": cfg.steps, "final_eval_loss": final["loss"],
                             "final_eval_accuracy": final["accuracy"], "eval_n": final["n"],
                             "train_s": train_s})
                say(f"final: eval {_describe(final)}; training took {train_s:.0f} s")
            peft = None if unnamed else run.save_peft(adapter, engine.header)
        finally:
            run.close()
    also = f" and {peft} (PEFT)" if peft else ""
    say(f"adapter written to {run.path / 'adapter.gguf'} (llama.cpp){also}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """`prge-gguf eval`: loss and accuracy of the model, with or without an adapter."""
    from prge_gguf.train import evaluate

    task = _task(args)
    files = _data_files(args, task)
    # --valid, else a data folder's test (or valid) split, else the --data file, else the task's dev set.
    if args.valid or not args.data:
        source = files["valid"]
    elif Path(args.data).is_dir():
        source = files["test"] or files["valid"]
    else:
        source = files["train"]
    if source is None:
        raise PrgeError(f"--task {task.name} ships no data: pass --data FILE to evaluate")
    examples = task.examples(Path(source))
    if args.limit:
        examples = examples[: args.limit]
    with _open_engine(args) as engine:
        adapter = _read_adapter(args.adapter, engine.header) if args.adapter else None
        t0 = time.perf_counter()
        m = evaluate(engine, _tokenize_all(engine, examples, args), adapter, args.loss)
        m["seconds"] = time.perf_counter() - t0
    if args.json:
        print(json.dumps(m))
    else:
        print(f"{_describe(m)}, {m['seconds']:.1f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """`prge-gguf info`: what a GGUF model holds, and what LoRA can target in it."""
    from converters.peft import hf_modules, peft_targets
    from prge_gguf.gguf_header import read_header
    from prge_gguf.lora import default_targets, model_targets, untargeted

    path = _model_path(args.model)
    h = read_header(path)
    md = h.metadata
    arch = h.architecture
    print(f"file:          {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if md.get("general.type") == "adapter":
        return _adapter_info(path)
    print(f"architecture:  {arch}  ({md.get('general.name', '?')})")
    for key in ("block_count", "embedding_length", "feed_forward_length", "context_length"):
        print(f"{key + ':':<15}{md.get(f'{arch}.{key}', '?')}")
    print(f"vocabulary:    {md.get('tokenizer.ggml.tokens', '?')} tokens")
    types = Counter(t.type_name for t in h.tensors.values())
    print("tensor types:  " + ", ".join(f"{k} x{v}" for k, v in types.most_common()))
    print(f"fingerprint:   {base_fingerprint(h)}")
    present = model_targets(h)
    if not present:
        print(f"LoRA targets:  none (no block weight named {', '.join(ALL_TARGETS)}): "
              "prge-gguf cannot train this model")
        return 0
    shapes = target_shapes(h, present)
    print(f"LoRA targets (out x in, type, layers; default {','.join(default_targets(h))}):")
    for t in present:
        names = [n for n in shapes if f".{t}." in n]
        info = h.tensors[names[0]]
        rows = "x".join(map(str, info.shape[:-1]))  # experts x out, for expert weights
        print(f"  {t:<13} {rows:>8} x {info.shape[-1]:<6} {info.type_name:<6} x{len(names)}")
    if others := untargeted(h):
        print(f"not trained:   {', '.join(others)} (no target names it)")
    unnamed = [t for t in present if t not in peft_targets(arch)]
    split = "attn_qkv" in present and "attn_qkv" not in hf_modules(arch)
    print("PEFT export:   " + (f"not for {', '.join(unnamed)} (no Hugging Face module: GGUF adapter only)"
                               if unnamed else "yes")
          + " (attn_qkv as q_proj, k_proj, v_proj sharing one lora_A)" * split)
    return 0


def _adapter_info(path: Path) -> int:
    """`prge-gguf info ADAPTER.gguf`: what a LoRA adapter file holds."""
    from prge_gguf.lora import blocks_of, read_gguf

    adapter = read_gguf(path)
    blocks = blocks_of(adapter.names)
    print(f"LoRA adapter for architecture {adapter.architecture}: rank {adapter.rank}, "
          f"alpha {adapter.alpha:g}")
    print(f"targets:       {', '.join(adapter.targets)} on {len(blocks)} blocks "
          f"({blocks[0]}..{blocks[-1]})" if blocks else f"tensors:       {', '.join(adapter.names)}")
    print(f"base model:    fingerprint {adapter.fingerprint or '? (not recorded)'}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """`prge-gguf generate`: greedy completions, as a sanity check of an adapter."""
    from prge_gguf.data import unescape_template
    from prge_gguf.lm_data import generation_prompt

    if args.engine != "llama":
        raise PrgeError("generate runs on the llama engine (drop --engine torch)")
    with _open_engine(args) as engine:
        adapters = [(_read_adapter(args.adapter, engine.header), 1.0)] if args.adapter else []
        for prompt in map(unescape_template, args.prompt):
            if args.chat:
                if not engine.chat_template:
                    raise PrgeError(f"{engine.model_path}: --chat needs a model with tokenizer.chat_template")
                text = generation_prompt(engine.chat_template, engine.special_tokens(), prompt)
                tokens = engine.tokenize(text, add_special=True, parse_special=True)
            else:
                tokens = engine.tokenize(prompt, add_special=True)
            completion = engine.detokenize(engine.generate(tokens, adapters, args.max_tokens))
            print(f"### prompt\n{prompt}\n### completion\n{completion}\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """`prge-gguf export`: GGUF adapter <-> PEFT folder, or merged into the base model."""
    from converters.peft import to_peft_for
    from prge_gguf.gguf_header import read_header
    from prge_gguf.lora import write_gguf
    from prge_gguf.outputs import check_output_file, check_output_folder, replace_folder

    header = read_header(_model_path(args.model))
    inputs = (args.adapter, header.path)
    if args.to in ("peft", "ollama"):
        out = check_output_folder(args.out, force=args.force, inputs=inputs)
    else:
        out = check_output_file(args.out, force=args.force, inputs=inputs)
    adapter = _read_adapter(args.adapter, header)
    try:
        if args.to == "peft":
            replace_folder(out, lambda tmp: to_peft_for(adapter, tmp, header))
        elif args.to == "ollama":
            replace_folder(out, lambda tmp: _write_ollama(tmp, out, adapter, header))
        elif args.to == "merged":
            from converters.merge import merge

            merge(header.path, adapter, out, args.type)
        else:
            write_gguf(adapter, out)
    except OSError as exc:
        raise PrgeError(f"--out {out}: cannot write it ({exc.strerror or exc}); nothing was written"
                        ) from None
    print(f"wrote {out}")
    return 0


def _write_ollama(folder: Path, final: Path, adapter, header) -> None:
    """adapter.gguf and a Modelfile naming it where `folder` will stand, at `final`."""
    from converters.ollama import modelfile
    from prge_gguf.lora import write_gguf

    write_gguf(adapter, folder / "adapter.gguf")
    (folder / "Modelfile").write_text(modelfile(header.path, final / "adapter.gguf", header))


def cmd_plot(args: argparse.Namespace) -> int:
    """`prge-gguf plot`: a run's curves as a PNG."""
    from prge_gguf.plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out)}")
    return 0


def _fill_unset(args: argparse.Namespace, values: dict) -> None:
    """Set each of `values` where this command has the flag and its command line left it unset."""
    for key, value in values.items():
        if hasattr(args, key) and getattr(args, key) is None:
            setattr(args, key, value)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `prge-gguf`; user errors print one line and exit with code 2."""
    args = build_parser().parse_args(argv)
    handler = {"train": cmd_train, "eval": cmd_eval, "info": cmd_info, "plot": cmd_plot,
               "generate": cmd_generate, "export": cmd_export}[args.command]
    try:
        if getattr(args, "config", None):
            from prge_gguf.config_file import load_config_file

            _fill_unset(args, load_config_file(args.config, _FILE_KEYS))
        # What the user set (flags and --config), before saved and default values fill the rest.
        args.given = frozenset(k for k, v in vars(args).items() if v is not None and v is not False)
        if getattr(args, "resume", None):
            from prge_gguf.run_dir import RunDir

            saved = RunDir.saved_machine(Path(args.resume))
            _fill_unset(args, {k: v for k, v in saved.items() if k in _MACHINE_KEYS})
        _fill_unset(args, _DEFAULTS)
        return handler(args)
    except PrgeError as exc:
        # One line, whatever a message quotes from the input (a value with a newline in it).
        print("error: " + str(exc).replace("\n", "\\n"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
