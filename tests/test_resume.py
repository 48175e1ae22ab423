"""Checkpoints and exact resume: a run killed with SIGKILL and resumed ends bit-identical."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from prge_gguf.cli import main

pytestmark = pytest.mark.slow


def _train_cmd(out, valid):
    return [sys.executable, "-m", "prge_gguf", "train", "--task", "sst2", "--valid", str(valid),
            "--steps", "8", "--batch-size", "4", "--targets", "attn_v", "--lr", "1e-2",
            "--checkpoint-every", "2", "--eval-every", "0", "--threads", "2", "--out", str(out)]


def _steps(out):
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "a joy to watch", "label": 1}\n{"text": "tedious", "label": 0}\n')
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_train_cmd(whole, valid), check=True, capture_output=True)

    proc = subprocess.Popen(_train_cmd(killed, valid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(_steps(killed)) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    state = json.loads((killed / "checkpoint.json").read_text())
    assert 2 <= state["step"] < 8

    assert main(["train", "--resume", str(killed), "--threads", "2"]) == 0
    assert (killed / "adapter.gguf").read_bytes() == (whole / "adapter.gguf").read_bytes()
    assert _steps(killed)[:8] == list(range(1, 9))  # each step logged once, in order
    assert json.loads((killed / "checkpoint.json").read_text())["step"] == 8


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path}: no checkpoint to resume from (checkpoint.json missing)")
