"""torchrun jobs on loopback: ranks share the perturbations and end bit-identical to one process."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
_TIMING = ("wall", "step_s", "tok_s", "ranks", "comm_bytes", "comm_s", "train_s", "decode_s", "adapter_s",
           "logits_s")


def _train_args(out: Path, valid: Path, steps: int = 6) -> list[str]:
    return ["-m", "prge_gguf", "train", "--model", "smollm2-135m", "--task", "sst2", "--valid", str(valid),
            "--steps", str(steps), "--batch-size", "4", "--q", "2", "--lr", "1e-2", "--eval-every", "0",
            "--checkpoint-every", "1", "--out", str(out)]


def _rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in rows]


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> Path:
    from prge_gguf.tasks import builtin_task

    lines = builtin_task("sst2").dev_file.read_text().splitlines()[:71]  # header + 70: two evaluation chunks
    path = tmp_path_factory.mktemp("data") / "valid.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, valid) -> Path:
    """The reference: one plain process, 2 threads."""
    out = tmp_path_factory.mktemp("one") / "run"
    subprocess.run([sys.executable, *_train_args(out, valid), "--threads", "2"], check=True,
                   capture_output=True)
    return out


def test_two_ranks_of_one_thread_equal_one_process_of_two(tmp_path, valid, one_process):
    out = tmp_path / "run"
    subprocess.run([*TORCHRUN, "--nproc_per_node", "2", *_train_args(out, valid), "--threads", "1",
                    "--distributed"], check=True, capture_output=True)
    assert (out / "adapter.gguf").read_bytes() == (one_process / "adapter.gguf").read_bytes()
    # Every step's adapter hash (checked equal across ranks as it runs) and the final evaluation
    # (its chunks dealt out to the ranks) are the single process's, to the bit.
    assert _without_timing(_rows(out)) == _without_timing(_rows(one_process))
    steps = [r for r in _rows(out) if "loss" in r]
    assert len(steps) == 6 and len({r["adapter_sha256"] for r in steps}) == 6
    # What travels: the 2q mean losses (float64) and the 8-byte hash, per rank and step.
    assert {(r["ranks"], r["comm_bytes"]) for r in steps} == {(2, 2 * 2 * 8 + 8)}


def _pid_of_rank(job: str, rank: int) -> int | None:
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"PRGE_TEST_JOB={job}".encode() in env and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


def test_a_dead_rank_stops_the_job_and_the_checkpoint_resumes(tmp_path, valid, one_process):
    out, job = tmp_path / "run", uuid.uuid4().hex
    args = [*TORCHRUN, "--nproc_per_node", "2", *_train_args(out, valid), "--threads", "1", "--distributed"]
    proc = subprocess.Popen(args, env={**os.environ, "PRGE_TEST_JOB": job}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while len([r for r in _rows(out) if "loss" in r]) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.05)
    os.kill(_pid_of_rank(job, 1), signal.SIGKILL)
    log = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode != 0
    assert "exitcode  : -9" in log  # torchrun names the dead rank and its signal
    assert "--resume" in log  # rank 0 (stopped by torchrun, or losing rank 1) says how to go on
    state = json.loads((out / "checkpoint.json").read_text())
    assert 2 <= state["step"] < 6 and (out / state["adapter"]).is_file()

    subprocess.run([*TORCHRUN, "--nproc_per_node", "2", "-m", "prge_gguf", "train", "--resume", str(out),
                    "--threads", "1", "--distributed"], check=True, capture_output=True)
    assert (out / "adapter.gguf").read_bytes() == (one_process / "adapter.gguf").read_bytes()


def test_distributed_outside_torchrun_is_a_clear_error(tmp_path, capsys):
    from prge_gguf.cli import main

    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
           if k in os.environ}
    try:
        assert main(["train", "--task", "sst2", "--out", str(tmp_path / "r"), "--distributed"]) == 2
    finally:
        os.environ.update(env)
    assert capsys.readouterr().err.strip() == (
        "error: --distributed needs torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT "
        "unset): run 'torchrun --nproc_per_node N -m prge_gguf train ... --distributed'")
    assert not (tmp_path / "r").exists()
