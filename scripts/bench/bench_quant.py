"""Step time of each llama.cpp file type against its own raw-decode limit, on this CPU.

    python scripts/bench/bench_quant.py                                  # -> bench/quant.{json,md}
    python scripts/bench/bench_quant.py --source tinyllama-1.1b --out bench/quant-1.1b

Models: the shipped SmolLM2-135M-Instruct Q4_1 re-quantized by llama.cpp's quantizer
(`prge_gguf.synthetic.quantize`, allow_requantize) to each of --types (Q4_1: the shipped file).
SmolLM2's rows are 576 values wide, not a multiple of the 256-value blocks of the K-quants and
IQ4_XS, so llama-quantize gives most of its tensors a fallback type (Q4_K_M: Q5_0; IQ4_XS:
IQ4_NL); the "tensor types" column says what each file holds. `--source PRESET` starts instead
from a random-weight F16 model of a prge_gguf.synthetic preset (tinyllama-1.1b's rows are
multiples of 256, so each type is itself). IQ4_XS is made without an importance matrix (llama.cpp
asks one only of the IQ1 and IQ2 types); a type the quantizer refuses is a row saying so.

Timing: bench_speed.py's llama child, each type in its own process, the default step (LoRA-FA
r 8 on attn_q + attn_v, SST-2 batches of 16, the context `train` sizes): for each step, llama.cpp's
own decode of exactly the step's 2q token batches without an adapter (the limit), then the
P-RGE step on the same batch, with the same threads; medians of the timed steps after a warm-up
step. The types alternate over --repeats rounds (one process each a round); the table gives
the medians over the rounds of the step, of the limit, and of each round's limit / step (the
target: >= 0.9x). The ratio is taken within a process, where step and limit alternate, because
processes on this machine differ by 5-20% from one another.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench_common import machine, made_by, write_outputs  # noqa: E402
from bench_speed import BATCH, run_child  # noqa: E402

from prge_gguf.errors import PrgeError  # noqa: E402
from prge_gguf.gguf_header import read_header  # noqa: E402

TYPES = ("Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_XS", "Q8_0", "Q4_0", "Q4_1", "BF16", "F16")


def make_models(types: list[str], source: str, work: Path, threads: int | None) -> dict[str, Path | str]:
    """Each type's model file, or the quantizer's refusal in words."""
    from prge_gguf.models import smollm2_path
    from prge_gguf.synthetic import quantize, write_synthetic

    if source == "shipped":
        src, native = smollm2_path(), "Q4_1"
    else:
        src, native = write_synthetic(work / f"{source}-F16.gguf", source, "F16"), "F16"
    models: dict[str, Path | str] = {}
    for ftype in types:
        try:
            models[ftype] = src if ftype == native else quantize(src, work / f"{ftype}.gguf", ftype, threads)
        except PrgeError as exc:
            models[ftype] = str(exc)
        print(f"{ftype}: {models[ftype]}", file=sys.stderr, flush=True)
    return models


def tensor_types(path: Path) -> str:
    """The types of a file's weights (2-D and more; norms left out), most common first."""
    types = Counter(t.type_name for t in read_header(path).tensors.values() if len(t.shape) > 1)
    return ", ".join(f"{name} x{n}" for name, n in types.most_common())


def table(rows: list[dict]) -> str:
    """The Markdown table of `rows` (a refused type: its reason)."""
    lines = ["| file type | tensor types (weights) | file (MiB) | step (s) | raw decode (s) | vs limit |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['type']} | not made: {r['error']} | - | - | - | - |")
        else:
            lines.append(f"| {r['type']} | {r['tensor_types']} | {r['file_mib']:.0f} | {r['step_s']:.2f} | "
                         f"{r['limit_s']:.2f} | {r['vs_limit']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    """Make each type's model, time its step and its limit, write OUT.json and OUT.md."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", nargs="+", default=list(TYPES), metavar="TYPE", help=" ".join(TYPES))
    ap.add_argument("--source", default="shipped",
                    help="shipped (SmolLM2-135M-Instruct Q4_1), or a prge_gguf.synthetic preset")
    ap.add_argument("--q", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4, help="timed steps a process (after one warm-up)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds over the types (alternating)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/quant")
    args = ap.parse_args()
    # The children (bench_speed.py processes) import this checkout's code.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        models = make_models(args.types, args.source, Path(tmp), args.threads)
        made = {t: p for t, p in models.items() if isinstance(p, Path)}
        runs: dict[str, list[dict]] = {t: [] for t in made}
        for _ in range(args.repeats):
            for ftype, path in made.items():
                runs[ftype].append(run_child("llama", path, args.q, args.steps, args.threads))
                print(f"{ftype}: step {runs[ftype][-1]['step_s']:.2f} s, limit "
                      f"{runs[ftype][-1]['limit_s']:.2f} s", file=sys.stderr, flush=True)
        rows = []
        for ftype, model in models.items():
            if ftype not in made:
                rows.append({"type": ftype, "error": model})
                continue
            reps = runs[ftype]
            rows.append({"type": ftype, "tensor_types": tensor_types(model),
                         "file_mib": model.stat().st_size / 2**20,
                         **{k: statistics.median(r[k] for r in reps)
                            for k in ("step_s", "limit_s", "decode_s")},
                         "vs_limit": statistics.median(r["limit_s"] / r["step_s"] for r in reps),
                         "tokens_per_step": reps[0]["tokens_per_step"], "runs": reps})
    m = machine()
    source = "SmolLM2-135M-Instruct Q4_1, re-quantized" if args.source == "shipped" else \
        f"random-weight {args.source} (F16), quantized"
    notes = (f"{source} by llama.cpp; P-RGE q {args.q}, SST-2 batches of {BATCH}, LoRA-FA r 8 on attn_q + "
             f"attn_v, {args.threads} threads; medians of {args.steps} timed steps a process, then of "
             f"{args.repeats} alternating rounds. Raw decode: llama.cpp's decode of the step's token batches "
             "without an adapter; vs limit: the median over the rounds of raw decode / step in one process. "
             + made_by(m))
    write_outputs(args.out, {"machine": m, "source": args.source, "q": args.q, "threads": args.threads,
                             "steps": args.steps, "repeats": args.repeats, "rows": rows},
                  table(rows) + "\n\n" + notes)


if __name__ == "__main__":
    main()
