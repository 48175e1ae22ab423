"""What every benchmark records beside its numbers: the machine, the llama.cpp build, the commit."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*cmd: str, cwd: Path | None = None) -> str:
    """A command's stdout, or "" where it is missing or fails."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=cwd).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit(repo: Path = ROOT) -> str:
    """Short HEAD of the checkout `repo` (default: this one), with "-dirty" when tracked files have
    uncommitted changes."""
    head = _run("git", "rev-parse", "--short", "HEAD", cwd=repo)
    dirty = _run("git", "status", "--porcelain", "--untracked-files=no", cwd=repo)
    return head + ("-dirty" if head and dirty else "")


def machine() -> dict:
    """CPU model and core count, the NVIDIA GPU (name, driver, memory) if any, OS, Python,
    llama-cpp-python version and the git commit."""
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
    gpu = _run("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader")
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu.splitlines()[0] if gpu else None,
            "os": platform.platform(), "python": platform.python_version(), "llama_cpp_python": llama,
            "git_commit": git_commit()}


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux carries
    ru_maxrss over exec from the parent, so a child would report at least the parent's peak."""
    status = Path("/proc/self/status").read_text().splitlines()
    line = next((s for s in status if s.startswith("VmHWM:")), None)
    return int(line.split()[1]) / 1024 if line else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def made_by(m: dict) -> str:
    """A table's foot: the CPU of `machine()`'s `m`, the commit, and the command that made it."""
    script = Path(sys.argv[0]).resolve()
    script = script.relative_to(ROOT) if script.is_relative_to(ROOT) else Path(sys.argv[0])
    return (f"Machine: {m['cpu']} ({m['cores']} cores), commit {m['git_commit']}. Made by "
            f"`python {script} {' '.join(sys.argv[1:])}`.")


def write_outputs(stem: str, result: dict, table: str) -> None:
    """`stem`.json (the result) and `stem`.md (the table), and the table on stdout."""
    path = Path(stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    path.with_suffix(".md").write_text(table + "\n")
    print(table)


class GpuSlots:
    """Spreads the jobs a benchmark runs at once over `n` GPUs of one machine: each job gets the
    GPU running the fewest jobs (CUDA_VISIBLE_DEVICES); with n = 0 jobs see the environment as is.
    The GPUs are the first `n` that CUDA_VISIBLE_DEVICES lists where it is set (so benchmarks
    started side by side can share a machine's GPUs out between them), else 0 .. n-1."""

    def __init__(self, n: int) -> None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        self._ids = visible.split(",")[:n] if visible else [str(i) for i in range(n)]
        self._jobs = [0] * len(self._ids)
        self._lock = threading.Lock()

    @contextmanager
    def env(self) -> Iterator[dict[str, str] | None]:
        """The environment for one job (None: inherit), for as long as the job runs."""
        if not self._jobs:
            yield None
            return
        with self._lock:
            gpu = min(range(len(self._jobs)), key=self._jobs.__getitem__)
            self._jobs[gpu] += 1
        try:
            yield {**os.environ, "CUDA_VISIBLE_DEVICES": self._ids[gpu]}
        finally:
            with self._lock:
                self._jobs[gpu] -= 1
