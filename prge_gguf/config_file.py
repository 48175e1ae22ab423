"""`--config run.yaml`: settings from a file; the command line overrides them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from prge_gguf.data import read_utf8
from prge_gguf.errors import PrgeError


def load_config_file(path: str | Path, allowed: Iterable[str]) -> dict[str, object]:
    """The file's settings as {flag_name: value}; unknown keys are rejected, naming file and key."""
    path = Path(path)
    allowed = set(allowed)
    if not path.is_file():
        raise PrgeError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(read_utf8(path)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise PrgeError(f"{path}{where}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise PrgeError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    settings = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in allowed:
            raise PrgeError(f"{path}: unknown key '{key}' (expected one of: {', '.join(sorted(allowed))})")
        settings[name] = value
    return settings
