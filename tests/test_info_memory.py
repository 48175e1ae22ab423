"""`prge-gguf info` states the memory a training run needs at the defaults: the number train's
own memory check computes before it loads the model, beside the memory free now."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from prge_gguf import memory
from prge_gguf.cli import main
from prge_gguf.errors import PrgeError
from prge_gguf.models import default_model_path
from prge_gguf.synthetic import write_tiny


def _train_estimate(monkeypatch, capsys, model, out) -> int:
    """The bytes `prge-gguf train` at the defaults passes to its memory check (then stopped)."""
    seen = []

    def stop(needed: int) -> None:
        seen.append(needed)
        raise PrgeError("stopped after the memory check")

    monkeypatch.setattr(memory, "check_fits", stop)
    assert main(["train", "--model", str(model), "--task", "sst2", "--out", str(out)]) == 2
    capsys.readouterr()
    return seen[0]


@pytest.mark.parametrize("kind", ["shipped", "phi3"])  # phi3: fused attn_qkv, the default target there
def test_info_states_the_memory_train_estimates(tmp_path, monkeypatch, capsys, kind):
    model = default_model_path() if kind == "shipped" else write_tiny(tmp_path / "phi3.gguf", "phi3", "F16")
    monkeypatch.setattr(memory, "available_bytes", lambda: 3 * 2**30)
    assert main(["info", str(model)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("train memory:"))
    needed = _train_estimate(monkeypatch, capsys, model, tmp_path / "run")
    assert f"about {memory.size_text(needed)} at the defaults (rank 8, q 1, " in line
    assert line.endswith("n_ctx 768); free now: 3.0 GiB")
    assert ("attn_qkv" if kind == "phi3" else "attn_q+attn_v") in line
    assert model.stat().st_size < needed


def test_info_loads_no_engine():
    code = ("import sys; from prge_gguf.cli import main; main(['info']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('llama_cpp', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^train memory:  about \d+ MiB", out, re.M)
    assert out.strip().splitlines()[-1] == "[]"
