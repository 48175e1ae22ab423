"""Shared fixtures: the real default model, one engine per test session, shared data paths."""


from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def model_path() -> Path:
    from prge_gguf.models import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def engine(model_path):
    from prge_gguf.engine.llama import LlamaEngine

    with LlamaEngine(model_path, n_ctx=1024, threads=2) as eng:
        yield eng
