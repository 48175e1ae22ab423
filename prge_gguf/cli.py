"""Command line: argument parsing and wiring only. Training runs through `job.run_training` with
settings that `settings.resolve` makes; defaults live in TrainConfig and `settings`."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from prge_gguf import __version__
from prge_gguf.api import EXPORT_FORMATS
from prge_gguf.errors import PrgeError
from prge_gguf.estimators import ESTIMATORS
from prge_gguf.settings import (
    CPU_MAX_N_CTX,
    DEFAULT_LR,
    GPU_MAX_N_CTX,
    GPU_ZO_BATCH,
    MAX_N_CTX,
    OPTIMIZERS,
    SETTINGS,
    resolve,
)
from prge_gguf.targets import ALL_TARGETS, DEFAULT_TARGETS


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="base model: a GGUF file, or gemma3-270m (default: Gemma 3 270M Q4_K_M, "
                                   "shipped) or smollm2-135m (SmolLM2-135M-Instruct Q4_1, shipped)")
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
                         "(--threads, --n-gpu-layers, --device, --parallel, --routing: as saved unless "
                         "given; --steps N extends it to N steps)")
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
                         "8 with --n-gpu-layers; on the CPU one per 2 threads, at least 2, at most 8)")
    tr.add_argument("--routing", action=argparse.BooleanOptionalAction, default=None,
                    help="each context scores its share of the perturbations in shared decodes (needs "
                         "llama.cpp built by scripts/build_llama_routing.py; slower on a CPU)")
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
    ex.add_argument("--to", choices=EXPORT_FORMATS, required=True,
                    help="peft: PEFT folder; gguf: llama.cpp adapter; merged: base model with the adapter "
                         "in; ollama: a folder of Modelfile + adapter.gguf for 'ollama create NAME -f "
                         "DIR/Modelfile'")
    ex.add_argument("--out", required=True, help="output folder (peft, ollama) or .gguf file")
    ex.add_argument("--force", action="store_true", help="replace an existing output (never an input)")
    ex.add_argument("--type", dest="merged_type",
                    help="merged tensors' type: Q8_0 (default), F16, Q4_0, ... or base (keep each type)")
    ex.add_argument("--model", help="its base model GGUF (default: the default model, gemma3-270m)")

    pl = sub.add_parser("plot", help="training curves of a run folder as a PNG")
    pl.add_argument("run_dir", help="run folder written by 'prge-gguf train'")
    pl.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")

    info = sub.add_parser("info", help="architecture, quant types and target tensors of a GGUF")
    info.add_argument("model", nargs="?", help="GGUF file or a shipped model's name (default: gemma3-270m)")
    return parser


def cmd_eval(args: argparse.Namespace) -> int:
    """`prge-gguf eval`: loss and accuracy of the model, with or without an adapter."""
    from prge_gguf.api import EVAL_SETTINGS, evaluate
    from prge_gguf.inputs import describe

    m = evaluate(**{k: getattr(args, k) for k in EVAL_SETTINGS})
    if args.json:
        print(json.dumps(m))
    else:
        print(f"{describe(m)}, {m['seconds']:.1f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """`prge-gguf info`: what a GGUF model holds, and what LoRA can target in it."""
    return show_info(args.model)


def show_info(model: str | None) -> int:
    """Print what the GGUF `model` (a path or a shipped model's name) holds: its architecture,
    tensor types and LoRA targets, or, for an adapter file, its rank, targets and base."""
    from prge_gguf.gguf_header import read_header
    from prge_gguf.hf_names import hf_modules, peft_targets
    from prge_gguf.lora import base_fingerprint, default_targets, model_targets, target_shapes, untargeted
    from prge_gguf.memory import describe_default_run
    from prge_gguf.models import model_path

    path = model_path(model)
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
    print(describe_default_run(h))
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
    from prge_gguf.api import GENERATE_SETTINGS, generate
    from prge_gguf.data import unescape_template

    prompts = [unescape_template(p) for p in args.prompt]
    completions = generate(prompts, adapter=args.adapter, chat=args.chat,
                           **_given(args, *GENERATE_SETTINGS, "max_tokens"))
    for prompt, completion in zip(prompts, completions, strict=True):
        print(f"### prompt\n{prompt}\n### completion\n{completion}\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """`prge-gguf export`: GGUF adapter <-> PEFT folder, or merged into the base model."""
    from prge_gguf.api import export

    out = export(args.adapter, args.to, args.out, force=args.force, **_given(args, "model", "merged_type"))
    print(f"wrote {out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """`prge-gguf plot`: a run's curves as a PNG."""
    from prge_gguf.plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out)}")
    return 0


def _given(args: argparse.Namespace, *keys: str) -> dict[str, object]:
    """The flags among `keys` that the command line set: the rest keep the API's defaults."""
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def cmd_train(args: argparse.Namespace) -> int:
    """`prge-gguf train`: a new run in --out, or --resume one."""
    from prge_gguf.job import run_training

    run_training(resolve({k: getattr(args, k) for k in SETTINGS if hasattr(args, k)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `prge-gguf`; user errors print one line and exit with code 2."""
    args = build_parser().parse_args(argv)
    handler = {"train": cmd_train, "eval": cmd_eval, "info": cmd_info, "plot": cmd_plot,
               "generate": cmd_generate, "export": cmd_export}[args.command]
    try:
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
