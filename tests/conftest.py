"""Shared fixtures: a real shipped model (SmolLM2-135M, the faster of the two), one engine per test
session. Commands that take the default model get SmolLM2 too, except in tests marked
`default_model` (the README's own commands), which run the real default."""


from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _fast_default_model(request, monkeypatch):
    if request.node.get_closest_marker("default_model") is None:
        monkeypatch.setattr("prge_gguf.models.DEFAULT_MODEL", "smollm2-135m")


@pytest.fixture(scope="session")
def model_path() -> Path:
    from prge_gguf.models import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def engine(model_path):
    from prge_gguf.engine.llama import LlamaEngine

    with LlamaEngine(model_path, n_ctx=1024, threads=2) as eng:
        yield eng
