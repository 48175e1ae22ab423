"""Build llama-cpp-python with adapter routing and install it into this environment.

patches/llama-cpp-adapter-routing.patch adds `llama_set_adapters_lora_seqs` to llama.cpp: several
adapters set on one context, each applied to the tokens of its own sequences only, so a context
scores its share of a step's perturbations in shared decodes (docs/engines.md, "Adapter
routing"). `prge-gguf train --routing` uses it; without the flag, or with the stock
llama-cpp-python, the engine scores one perturbation a decode as before.

    python scripts/build_llama_routing.py                                 # CPU
    CMAKE_ARGS="-DGGML_CUDA=on" python scripts/build_llama_routing.py     # CUDA (Metal: the default on a Mac)

It downloads the sdist of the installed llama-cpp-python version from PyPI, applies the patch,
builds a wheel (CMAKE_ARGS as for any llama-cpp-python build; minutes) into a cache folder named
for the patch, and installs it over the stock package. `--no-install` only builds and prints the
wheel's path. `pip install --force-reinstall llama-cpp-python==VERSION` goes back.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATCH = ROOT / "patches" / "llama-cpp-adapter-routing.patch"


def cmake_args() -> str:
    """CMAKE_ARGS of the build: the caller's, without the multimodal library (as README's install)."""
    given = os.environ.get("CMAKE_ARGS", "")
    return given if "LLAVA_BUILD" in given else f"{given} -DLLAVA_BUILD=OFF".strip()


def cache_dir() -> Path:
    """Where wheels built with this version of the patch are kept (one per CMAKE_ARGS)."""
    digest = hashlib.sha256(PATCH.read_bytes() + cmake_args().encode()).hexdigest()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "prge-gguf" / f"llama-routing-{digest[:12]}"


def apply_patch(src: Path, patch: Path = PATCH) -> None:
    """Apply `patch` to the unpacked llama-cpp-python sdist at `src`."""
    apply = ["patch", "-p1", "-i"] if shutil.which("patch") else ["git", "apply", "-p1"]
    subprocess.run([*apply, str(patch.resolve())], cwd=src, check=True)


def build_wheel(version: str | None = None) -> Path:
    """The patched wheel of llama-cpp-python `version` (default: the installed one), built once
    per patch and CMAKE_ARGS."""
    version = version or importlib.metadata.version("llama-cpp-python")
    dest = cache_dir()
    built = sorted(dest.glob(f"llama_cpp_python-{version}-*.whl"))
    if built:
        return built[0]
    with tempfile.TemporaryDirectory(prefix="prge-llama-routing-") as tmp:
        work = Path(tmp)
        pip = [sys.executable, "-m", "pip"]
        subprocess.run([*pip, "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(work)], check=True)
        with tarfile.open(next(work.glob("llama_cpp_python-*.tar.gz"))) as tar:
            tar.extractall(work, filter="data")
        src = work / f"llama_cpp_python-{version}"
        apply_patch(src)
        subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(work / "wheel"), str(src)], check=True,
                       env=dict(os.environ, CMAKE_ARGS=cmake_args()))
        dest.mkdir(parents=True, exist_ok=True)
        wheel = next((work / "wheel").glob("*.whl"))
        return Path(shutil.copy2(wheel, dest / wheel.name))


def main() -> None:
    """Build (or find) the wheel; install it unless --no-install."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", help="llama-cpp-python version (default: the installed one)")
    ap.add_argument("--no-install", action="store_true", help="only build; print the wheel's path")
    args = ap.parse_args()
    try:
        wheel = build_wheel(args.version)
        if not args.no_install:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps",
                            str(wheel)], check=True)
    except subprocess.CalledProcessError as exc:  # pip or patch has said why above
        sys.exit(f"error: {' '.join(map(str, exc.cmd[:5]))} ... failed (exit code {exc.returncode})")
    print(wheel)


if __name__ == "__main__":
    main()
