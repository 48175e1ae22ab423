"""Random corruptions of a valid data file, config file and adapter GGUF: every command ends
in success or one clear error line (exit 2), never a traceback, and never changes the file."""

import hashlib
import json

import numpy as np
import pytest

from prge_gguf import cli, job
from prge_gguf.errors import PrgeError
from prge_gguf.gguf_header import read_header
from prge_gguf.lora import init_lora_fa, write_gguf

CASES = 40  # corruptions per file kind


def _corrupt(raw: bytes, rng: np.random.Generator) -> bytes:
    """One of: cut short, bits flipped, a byte run overwritten, a line dropped or duplicated."""
    kind = rng.integers(4)
    if kind == 0:
        return raw[: rng.integers(len(raw))]
    data = bytearray(raw)
    if kind == 1:
        for pos in rng.integers(len(data), size=rng.integers(1, 8)):
            data[pos] ^= 1 << int(rng.integers(8))
    elif kind == 2:
        start = int(rng.integers(len(data)))
        data[start : start + 8] = rng.integers(256, size=8, dtype=np.uint8).tobytes()
    else:
        lines = bytes(data).split(b"\n")
        i = int(rng.integers(len(lines)))
        if rng.integers(2):
            lines.insert(i, lines[i])
        else:
            lines.pop(i)
        return b"\n".join(lines)
    return bytes(data)


def _stop_at_the_engine(args):
    # Everything a file can break is read and checked before the model loads; stop there.
    raise PrgeError("input accepted")


def _fuzz(capsys, path, raw, argv, seed):
    rng = np.random.default_rng(seed)
    for case in range(CASES):
        bad = _corrupt(raw, rng)
        path.write_bytes(bad)
        code = cli.main([str(a) for a in argv])
        err = capsys.readouterr().err.strip()
        assert code in (0, 2), (case, err)
        assert code == 0 or (err.startswith("error: ") and "\n" not in err), (case, err)
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(bad).digest()


def test_corrupt_jsonl(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(job, "open_engine", _stop_at_the_engine)
    data = tmp_path / "train.jsonl"
    raw = "".join(json.dumps({"text": f"review {i}", "label": i % 2}) + "\n" for i in range(6)).encode()
    _fuzz(capsys, data, raw, ["train", "--data", data, "--label-words", "0=bad,1=good", "--batch-size", 2,
                              "--out", tmp_path / "run"], seed=1)
    assert not (tmp_path / "run").exists()


def test_corrupt_yaml_config(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(job, "open_engine", _stop_at_the_engine)
    config = tmp_path / "run.yaml"
    raw = b"task: sst2\nsteps: 20\nlr: 0.02\nbatch_size: 4\ntargets: [attn_q, attn_v]\nrank: 4\nseed: 3\n"
    _fuzz(capsys, config, raw, ["train", "--config", config, "--out", tmp_path / "run"], seed=2)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["info", "export"])
def test_corrupt_adapter_gguf(capsys, tmp_path, model_path, command):
    adapter = tmp_path / "adapter.gguf"
    write_gguf(init_lora_fa(read_header(model_path), ["attn_v"], 2, 4.0, seed=0, num_layers=2), adapter)
    argv = ["info", adapter] if command == "info" else \
        ["export", adapter, "--to", "gguf", "--out", tmp_path / "copy.gguf", "--force"]
    _fuzz(capsys, adapter, adapter.read_bytes(), argv, seed=3)
