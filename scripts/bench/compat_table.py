"""The architecture compatibility table, from running tests/test_architectures.py.

Each architecture's tiny random-weight model (prge_gguf.synthetic) goes through the checks that
test module makes, one test per check and architecture (`test_<check>[<kind>]`); this script
runs them under pytest, reads the outcome of each from a JUnit XML report, and writes
bench/compat.json and bench/compat.md (and a second table from tests/test_quant_types.py: each
llama.cpp file type trains, reloads with the engine's log-probs, and merges):

| column | passes when |
| --- | --- |
| targets | what `prge-gguf info` lists (test_info_lists_targets) |
| not trained | block weights no target covers (a mixture of experts' router and experts) |
| train | 3 P-RGE steps on every target run and write adapter.gguf (test_train_three_steps) |
| GGUF adapter | llama-cpp-python's `Llama(lora_path=...)` gives the training engine's log-probs |
| merged | `export --to merged` loads and scores as base + adapter |
| PEFT | export to a PEFT folder and back is exact (for what PEFT names; the rest refused in one line) |
| torch parity | transformers (GGUF loader) + the adapter gives llama.cpp's log-probs |

It also rewrites README.md's compact copy of the table, between README_START and README_END:

    python scripts/bench/compat_table.py            # all architectures, ~1-2 min on 2 cores
    python scripts/bench/compat_table.py --readme   # README.md's table from bench/compat.json only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from prge_gguf.gguf_header import read_header  # noqa: E402
from prge_gguf.hf_names import hf_modules, peft_targets  # noqa: E402
from prge_gguf.lora import model_targets, untargeted  # noqa: E402
from prge_gguf.synthetic import ARCHS, write_tiny  # noqa: E402

TESTS = ("tests/test_architectures.py", "tests/test_quant_types.py")
# The test of each llama.cpp file type (a tiny llama quantized to it): train, reload, merge.
QUANT_TEST = "test_quant_type_trains_reloads_and_merges"
# Column -> the test of each architecture that decides it.
CHECKS = {
    "train": "test_train_three_steps",
    "GGUF adapter": "test_adapter_reloads_in_llama_cpp_python",
    "merged": "test_merged_export_loads",
    "PEFT": "test_peft_round_trip",
    "torch parity": "test_torch_parity",
}
# The versions the outcomes depend on: llama.cpp (vendored), transformers' GGUF loader, PEFT.
PACKAGES = ("llama-cpp-python", "transformers", "peft")
_CASE = re.compile(r"^(test_\w+)\[(.+)\]$")
README = ROOT / "README.md"
README_START, README_END = "<!-- compat:start -->", "<!-- compat:end -->"
# The README's columns: CHECKS' but train (every other column needs it).
README_CHECKS = ("GGUF adapter", "merged", "PEFT", "torch parity")


def outcomes(report: Path) -> dict[tuple[str, str], str]:
    """{(test, kind): "pass" | "fail" | "skip: reason"} from a pytest JUnit XML report."""
    result = {}
    for case in ET.parse(report).iter("testcase"):
        m = _CASE.match(case.get("name", ""))
        if not m:
            continue
        skipped = case.find("skipped")
        if skipped is not None:
            result[m.groups()] = "skip: " + skipped.get("message", "").removeprefix("Skipped: ")
        elif case.find("failure") is not None or case.find("error") is not None:
            result[m.groups()] = "fail"
        else:
            result[m.groups()] = "pass"
    return result


def describe(kind: str, work: Path) -> dict[str, object]:
    """What the table says of `kind` beyond pass/fail: its targets, what they leave out, and what
    PEFT cannot name or names differently."""
    header = read_header(write_tiny(work / f"{kind}.gguf", kind))
    arch, targets = header.architecture, model_targets(header)
    unnamed = [t for t in targets if t not in peft_targets(arch)]
    notes = [f"not {', '.join(unnamed)}: no Hugging Face module"] if unnamed else []
    if "attn_qkv" in targets and "attn_qkv" not in hf_modules(arch):
        notes.append("attn_qkv as q_proj, k_proj, v_proj sharing lora_A")
    return {"kind": kind, "architecture": arch, "targets": targets, "not_trained": untargeted(header),
            "peft_note": "; ".join(notes)}


def row(info: dict[str, object], results: dict[tuple[str, str], str]) -> dict[str, object]:
    """One architecture's line: its description and each check's outcome."""
    kind = info["kind"]
    cells = {column: results.get((test, kind), "not run") for column, test in CHECKS.items()}
    if info["peft_note"] and cells["PEFT"] == "pass":
        cells["PEFT"] = f"pass ({info['peft_note']})"
    info_ok = results.get(("test_info_lists_targets", kind), "not run")
    return {**info, "info": info_ok, **cells}


def markdown(rows: list[dict[str, object]], quants: dict[str, str], command: str, machine: str) -> str:
    """The tables as Markdown, with the command and machine that made them."""
    columns = ["targets", "not trained", *CHECKS]
    lines = [f"Made by `{command}` on {machine}. Tiny random-weight models (prge_gguf/synthetic.py):",
             "plumbing and numerics, not accuracy.", "",
             "| model | arch | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 2)]
    for r in rows:
        targets = ", ".join(r["targets"]) + ("" if r["info"] == "pass" else f" (info: {r['info']})")
        cells = [targets, ", ".join(r["not_trained"]) or "-", *(str(r[c]) for c in CHECKS)]
        lines.append(f"| {r['kind']} | {r['architecture']} | " + " | ".join(cells) + " |")
    lines += ["", "| file type (tiny llama) | trains, reloads in Llama(lora_path), merges |", "| --- | --- |"]
    lines += [f"| {ftype} | {outcome} |" for ftype, outcome in quants.items()]
    return "\n".join(lines) + "\n"


def _compact_targets(targets: list[str]) -> str:
    """attn_q, attn_k, ffn_up -> "attn q, k; ffn up": grouped by prefix, in the given order."""
    groups: dict[str, list[str]] = {}
    for t in targets:
        prefix, _, rest = t.partition("_")
        groups.setdefault(prefix, []).append(rest)
    return "; ".join(f"{prefix} {', '.join(rest)}" for prefix, rest in groups.items())


def _mark(outcome: str) -> str:
    """An outcome as a README cell: yes, yes* (with a note), - (skipped), no (failed)."""
    if outcome == "pass":
        return "yes"
    if outcome.startswith("pass ("):
        return "yes*"
    if outcome.startswith("skip"):
        return "-"
    return "**no**" if outcome == "fail" else outcome


def readme_table(result: dict) -> str:
    """The README's compact table of compat.json's `result` (what README_START..README_END hold)."""
    lines = ["| model | LoRA targets | " + " | ".join(README_CHECKS) + " |",
             "|" + " --- |" * (len(README_CHECKS) + 2)]
    for r in result["rows"]:
        model = r["kind"] if r["kind"] == r["architecture"] else f"{r['kind']} ({r['architecture']})"
        cells = [_compact_targets(r["targets"]), *(_mark(r[c]) for c in README_CHECKS)]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    notes = "; ".join(f"{r['kind']}, {r['peft_note']}" for r in result["rows"]
                      if r["peft_note"] and r["PEFT"].startswith("pass ("))
    passed = [t for t, outcome in result["quant_types"].items() if outcome == "pass"]
    failed = [f"{t} ({outcome})" for t, outcome in result["quant_types"].items() if outcome != "pass"]
    lines += ["", f"yes*: {notes}. -: skipped (why: [bench/compat.md](bench/compat.md)). File types "
              "that train, reload and merge (a tiny llama): " + ", ".join(passed)
              + (f"; not {', '.join(failed)}" if failed else "") + "."]
    return "\n".join(lines)


def rewrite_readme(table: str, readme: Path = README) -> None:
    """Replace what `readme` holds between README_START and README_END with `table`."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: no {README_START} ... {README_END} region to write the table into")
    readme.write_text(text[:start + len(README_START)] + "\n" + table + "\n" + text[end:])


def main() -> None:
    """Run the checks, write the JSON and Markdown tables and README.md's."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench", help="folder for compat.json and compat.md")
    ap.add_argument("--readme", action="store_true",
                    help="only rewrite README.md's table from OUT/compat.json (no tests run)")
    args = ap.parse_args()
    if args.readme:
        rewrite_readme(readme_table(json.loads((args.out / "compat.json").read_text())))
        return
    with tempfile.TemporaryDirectory(prefix="compat-") as tmp:
        report = Path(tmp) / "report.xml"
        # This checkout's code, not an installed copy's.
        path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
        env = {**os.environ, "PYTHONPATH": path}
        subprocess.run([sys.executable, "-m", "pytest", *TESTS, "-q", "-p", "no:cacheprovider",
                        f"--junitxml={report}"], cwd=ROOT, env=env, check=False)
        results = outcomes(report)
        rows = [row(describe(kind, Path(tmp)), results) for kind in ARCHS]
    quants = {param: outcome for (test, param), outcome in results.items() if test == QUANT_TEST}
    machine = (f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, " + ", ".join(f"{p} {version(p)}" for p in PACKAGES))
    command = "python scripts/bench/compat_table.py"
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": command, "machine": machine, "rows": rows, "quant_types": quants}
    (args.out / "compat.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    rewrite_readme(readme_table(result))
    text = markdown(rows, quants, command, machine)
    (args.out / "compat.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
