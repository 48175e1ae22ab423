"""Peak memory of a P-RGE training step against llama.cpp inference on the same model and rows,
at 1B, 3B and 7B shapes (random weights: memory and time only), and the step's time.

    python scripts/bench/bench_sizes.py --out bench/sizes             # Q4_K_M
    python scripts/bench/bench_sizes.py --type Q4_0 --out bench/sizes

Each model is written in `--type` (Q4_K_M, the default: Q4_K, and Q6_K where llama-quantize puts
it; or Q4_0) by prge_gguf.synthetic, as random blocks written directly: a 7B file in seconds,
where an F16 file of 13 GB and its quantization would take long on 2 cores. Each measurement
runs in a fresh process and reports its own VmHWM:
- train: `prge-gguf train` for one step (q 1, batch 16, attn_q + attn_v) on 16 SST-2 rows, one
  held-out row (the final evaluation), 2 threads;
- inference: llama-cpp-python's `Llama()` with the same context size scoring the same 16 rows,
  one `eval` a row, 2 threads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench_common import machine, made_by, write_outputs  # noqa: E402

from prge_gguf.synthetic import DIRECT  # noqa: E402

ROWS = 16
N_CTX = 512  # tokens a decode: 16 SST-2 rows with the task's prompt fit, as train fits them
PRESETS = ("tinyllama-1.1b", "llama-3b", "llama-7b")

_TRAIN = """
import json, sys
sys.path.insert(0, {scripts!r})
from bench_common import peak_rss_mib
from prge_gguf.cli import main
rc = main({argv!r})
print(json.dumps({{"rc": rc, "peak_rss_mib": peak_rss_mib()}}))
"""

_INFER = """
import json, sys, time
sys.path.insert(0, {scripts!r})
from bench_common import peak_rss_mib
from llama_cpp import Llama
from prge_gguf.tasks import builtin_task
task = builtin_task("sst2")
texts = [e.context + e.options[0] for e in task.examples(task.train_file)[:{rows}]]
llm = Llama(model_path={model!r}, n_ctx={n_ctx}, n_batch={n_ctx}, n_threads=2, verbose=False)
t0 = time.perf_counter()
for text in texts:
    llm.reset()
    llm.eval(llm.tokenize(text.encode()))
print(json.dumps({{"seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}}))
"""


def _python(code: str) -> dict:
    """Run `code` in a fresh interpreter; its last stdout line is JSON."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(preset: str, ftype: str, work: Path) -> dict:
    """One model: written, trained one step, and scored by Llama()."""
    from prge_gguf.data import read_records
    from prge_gguf.synthetic import write_synthetic
    from prge_gguf.tasks import builtin_task

    scripts = str(Path(__file__).resolve().parent)
    model = write_synthetic(work / f"{preset}.gguf", preset, ftype)
    data = work / "rows.jsonl"
    records = read_records(builtin_task("sst2").train_file)[:ROWS]
    data.write_text("".join(json.dumps(rec) + "\n" for _, rec in records))
    valid = work / "one.jsonl"
    valid.write_text(data.read_text().splitlines()[0] + "\n")
    out = work / f"run-{preset}"
    argv = ["train", "--model", str(model), "--task", "sst2", "--data", str(data), "--valid", str(valid),
            "--steps", "1", "--batch-size", str(ROWS), "--eval-every", "0", "--n-ctx", str(N_CTX),
            "--threads", "2", "--out", str(out)]
    train = _python(_TRAIN.format(scripts=scripts, argv=argv))
    step = next(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                if "step_s" in line)
    infer = _python(_INFER.format(scripts=scripts, rows=ROWS, model=str(model), n_ctx=N_CTX))
    return {"preset": preset, "type": ftype, "file_mib": model.stat().st_size / 2**20,
            "train_rc": train["rc"],
            "train_peak_rss_mib": train["peak_rss_mib"], "infer_peak_rss_mib": infer["peak_rss_mib"],
            "ratio": train["peak_rss_mib"] / infer["peak_rss_mib"], "step_s": step["step_s"],
            "step_tokens": step["tokens"], "infer_s": infer["seconds"]}


def main() -> None:
    """Measure each preset; print the table, write OUT.json and OUT.md."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--type", choices=DIRECT, default="Q4_K_M", help="the models' file type")
    ap.add_argument("--out", default="bench/sizes")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-sizes-") as tmp:
        for preset in args.presets:
            rows.append(measure(preset, args.type, Path(tmp)))
            (Path(tmp) / f"{preset}.gguf").unlink()
            print(json.dumps(rows[-1]), flush=True)
    m = machine()
    lines = [f"| shape ({args.type}, random weights) | file (MiB) | P-RGE step peak RSS (MiB) | "
             "Llama() scoring peak RSS (MiB) | ratio | step (s, 2 threads) | tokens a step |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['preset']} | {r['file_mib']:.0f} | {r['train_peak_rss_mib']:.0f} | "
              f"{r['infer_peak_rss_mib']:.0f} | {r['ratio']:.2f}x | {r['step_s']:.1f} | {r['step_tokens']} |"
              for r in rows]
    table = "\n".join([*lines, "", f"{ROWS} SST-2 rows, context {N_CTX} tokens, q 1, LoRA-FA r 8 on attn_q + "
                       "attn_v. " + made_by(m)])
    write_outputs(args.out, {"machine": m, "rows": rows}, table)


if __name__ == "__main__":
    main()
