"""What every benchmark records beside its numbers: the machine, the llama.cpp build, the commit."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path


def machine() -> dict:
    """CPU model and core count, OS, Python, llama-cpp-python version and the git commit."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    try:
        import llama_cpp

        llama = llama_cpp.__version__
    except ImportError:
        llama = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(),
            "python": platform.python_version(), "llama_cpp_python": llama, "git_commit": commit}


def write_outputs(stem: str, result: dict, table: str) -> None:
    """`stem`.json (the result) and `stem`.md (the table), and the table on stdout."""
    path = Path(stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    path.with_suffix(".md").write_text(table + "\n")
    print(table)
