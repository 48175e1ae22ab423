"""The README's parity table: llama.cpp vs transformers fp32, PEFT export, merged GGUFs, and the
torch engine's one-forward perturbations. Prints a table, writes bench/parity.json.

    python scripts/bench/bench_parity.py     (needs the torch extra; ~3 min on 2 cores)
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel

from converters.merge import merge
from converters.peft import to_peft
from prge_gguf.engine import ScoreRequest
from prge_gguf.engine.llama import LlamaEngine
from prge_gguf.engine.torch_engine import TorchEngine
from prge_gguf.lora import init_lora_fa
from prge_gguf.models import smollm2_path
from prge_gguf.targets import TARGETS
from prge_gguf.tasks import builtin_task, tokenize

TEXTS = ["a gorgeous, witty, seductive movie. It was", "The capital of France is",
         "the plot is nothing but boilerplate. It was"]


def random_adapter(header, targets, scale, seed):
    adapter = init_lora_fa(header, targets, 8, 16, seed=seed)
    rng = np.random.default_rng(seed)
    return adapter.with_b({n: (scale * rng.standard_normal(b.shape)).astype(np.float32)
                           for n, b in adapter.b.items()})


def next_token(engine, text, adapters):
    toks = engine.tokenize(text, add_special=True)
    req = ScoreRequest(tuple(toks), (len(toks) - 1,), (tuple(range(engine.n_vocab)),))
    return engine.score([req], adapters)[0][0].astype(np.float64)


def hf_next_token(model, engine, text):
    toks = engine.tokenize(text, add_special=True)
    with torch.no_grad():
        logits = model(torch.tensor([toks])).logits[0, -1].double()
    return (logits - torch.logsumexp(logits, -1)).numpy()


def kl(p, q):
    return float((np.exp(p) * (p - q)).sum())


def main() -> None:
    path = smollm2_path()
    out: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
                 "model": path.name}
    llama, ref = LlamaEngine(path, threads=2), TorchEngine(path, threads=2)
    task = builtin_task("sst2")
    requests = [r for e in task.examples(task.dev_file)[:16] for r in tokenize(llama, e).requests]
    adapter = random_adapter(llama.header, list(TARGETS), 0.05, 0)
    out["label_logprob_max_diff"] = {
        name: float(max(np.abs(a[0] - b[0]).max() for a, b in
                        zip(llama.score(requests, ads), ref.score(requests, ads), strict=True)))
        for name, ads in (("base", []), ("adapted", [(adapter, 1.0)]))}

    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for targets, scale in ((list(TARGETS), 0.1), (["attn_q", "attn_k"], 0.4)):
            ad = random_adapter(llama.header, targets, scale, 1)
            model = PeftModel.from_pretrained(ref.model, str(to_peft(ad, Path(tmp) / str(len(targets)),
                                                                     n_head=9, n_head_kv=3)))
            for text in TEXTS:
                with model.disable_adapter():
                    base = hf_next_token(model, llama, text)
                adapted = hf_next_token(model, llama, text)
                rows.append({"targets": len(targets), "kl_base": kl(base, next_token(llama, text, [])),
                             "kl_adapted": kl(adapted, next_token(llama, text, [(ad, 1.0)])),
                             "adapter_effect": kl(adapted, base)})
            ref.model = model.unload()
        out["peft_next_token_kl"] = rows

        merged = {}
        for qtype in ("Q8_0", "F16", "base"):
            file = Path(tmp) / f"merged-{qtype}.gguf"
            merge(path, adapter, file, qtype)
            with LlamaEngine(file, threads=2) as m:
                ratios = []
                for text in TEXTS:
                    target = next_token(llama, text, [(adapter, 1.0)])
                    effect = kl(target, next_token(llama, text, []))
                    ratios.append(kl(target, next_token(m, text, [])) / effect)
            merged[qtype] = ratios
        out["merged_kl_over_adapter_effect"] = merged

    rng = np.random.default_rng(2)
    noise = [{n: (0.01 * rng.standard_normal(b.shape)).astype(np.float32) for n, b in adapter.b.items()}
             for _ in range(2)]
    perturbed = [adapter.with_b({n: adapter.b[n] + s * z[n] for n in adapter.names})
                 for z in noise for s in (1, -1)]
    t0 = time.perf_counter()
    ref.score_each(requests, perturbed)
    together = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in perturbed:
        ref.score(requests, [(p, 1.0)])
    out["torch_2q4_one_forward_vs_separate_s"] = [together, time.perf_counter() - t0]

    Path("bench").mkdir(exist_ok=True)
    Path("bench/parity.json").write_text(json.dumps(out, indent=2) + "\n")
    rng_kl = [r["kl_adapted"] for r in rows]
    print("| comparison | measured |\n| --- | --- |")
    print(f"| label-word log-prob max diff, base / adapted | {out['label_logprob_max_diff']['base']:.3f} / "
          f"{out['label_logprob_max_diff']['adapted']:.3f} nats |")
    base_kl = [r["kl_base"] for r in rows]
    print(f"| next-token KL, base | {min(base_kl):.4f}-{max(base_kl):.4f} |")
    print(f"| next-token KL, PEFT vs GGUF adapter | {min(rng_kl):.4f}-{max(rng_kl):.4f} |")
    for qtype, ratios in merged.items():
        print(f"| merged {qtype} KL / adapter effect | {min(ratios):.2f}-{max(ratios):.2f}x |")
    print(f"| torch 4 perturbations: one forward vs separate | {together:.1f} s vs "
          f"{out['torch_2q4_one_forward_vs_separate_s'][1]:.1f} s |")
    print(f"machine: {out['machine']}")


if __name__ == "__main__":
    main()
