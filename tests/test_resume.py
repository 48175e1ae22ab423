"""Checkpoints and exact resume: a run killed with SIGKILL and resumed ends bit-identical."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prge_gguf.cli import main

pytestmark = pytest.mark.slow


def _train_cmd(out, valid, optimizer="zo", lr="1e-2"):
    return [sys.executable, "-m", "prge_gguf", "train", "--model", "smollm2-135m", "--task", "sst2",
            "--valid", str(valid), "--steps", "8", "--batch-size", "4", "--targets", "attn_v", "--lr", lr,
            "--optimizer", optimizer,
            "--checkpoint-every", "2", "--eval-every", "0", "--threads", "2", "--out", str(out)]


def _steps(out):
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


# zo-momentum carries state from step to step (its momentum, saved with each checkpoint).
@pytest.mark.parametrize("optimizer, lr", [("zo", "1e-2"), ("zo-momentum", "1e-3")])
def test_sigkill_then_resume_is_bit_identical(tmp_path, optimizer, lr):
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "a joy to watch", "label": 1}\n{"text": "tedious", "label": 0}\n')
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_train_cmd(whole, valid, optimizer, lr), check=True, capture_output=True)

    proc = subprocess.Popen(_train_cmd(killed, valid, optimizer, lr), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(_steps(killed)) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    state = json.loads((killed / "checkpoint.json").read_text())
    assert 2 <= state["step"] < 8
    assert ("optimizer" in state) == (optimizer == "zo-momentum")

    assert main(["train", "--resume", str(killed), "--threads", "2"]) == 0
    assert (killed / "adapter.gguf").read_bytes() == (whole / "adapter.gguf").read_bytes()
    assert _steps(killed)[:8] == list(range(1, 9))  # each step logged once, in order
    assert json.loads((killed / "checkpoint.json").read_text())["step"] == 8


def test_ctrl_c_writes_a_checkpoint_at_the_current_step(tmp_path):
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "a joy to watch", "label": 1}\n')
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    cmd = [*_train_cmd(whole, valid)[:-2], "--checkpoint-every", "0", "--steps", "12", "--out"]
    subprocess.run([*cmd, str(whole)], check=True, capture_output=True)
    # A shell running this suite in the background starts it with SIGINT ignored, which the
    # child would inherit: give it the default disposition, as a terminal's Ctrl-C expects.
    proc = subprocess.Popen([*cmd, str(stopped)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while len(_steps(stopped)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == 130 and b"interrupted" in err
    state = json.loads((stopped / "checkpoint.json").read_text())
    # The checkpoint holds the last step applied: the one logged, or, if Ctrl-C came between
    # logging a step and applying it, the one before (its row is dropped on resume).
    assert state["step"] >= 2 and len(_steps(stopped)) - state["step"] in (0, 1)
    assert main(["train", "--resume", str(stopped), "--threads", "2"]) == 0
    assert (stopped / "adapter.gguf").read_bytes() == (whole / "adapter.gguf").read_bytes()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path}: no checkpoint to resume from (checkpoint.json missing)")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "good", "label": 1}\n')
    out = tmp_path / "run"
    # lr 1e30 blows B up after one step: the second step's loss is NaN.
    code = main(["train", "--task", "sst2", "--valid", str(valid), "--steps", "4", "--batch-size", "2",
                 "--targets", "attn_v", "--lr", "1e30", "--checkpoint-every", "1", "--eval-every", "0",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err == ("error: step 2: loss is nan; lower --lr or --eps in a new run "
                   "(the run folder keeps its checkpoint of step 1)")
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 1
    assert sorted(p.name for p in out.iterdir() if p.name != "tensorboard") == [
        "checkpoint-000001.gguf", "checkpoint.json", "config.json", "metrics.jsonl"]


def test_disk_full_on_checkpoint_leaves_the_previous_one(tmp_path, capsys, monkeypatch):
    import errno

    from gguf import GGUFWriter

    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "good", "label": 1}\n')
    out = tmp_path / "run"
    real = GGUFWriter.write_tensors_to_file
    calls = {"n": 0}

    def fill_disk(self, *args, **kwargs):
        if self.path.parent == out:  # the run folder's files, not the engine's scratch adapters
            calls["n"] += 1
            if calls["n"] == 3:  # the checkpoint of step 2: its temp file exists, then the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GGUFWriter, "write_tensors_to_file", fill_disk)
    code = main(["train", "--task", "sst2", "--valid", str(valid), "--steps", "4", "--batch-size", "2",
                 "--targets", "attn_v", "--checkpoint-every", "1", "--eval-every", "0", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err == (f"error: {out / 'checkpoint-000002.gguf'}: cannot write the checkpoint "
                   "(No space left on device); the previous checkpoint is intact")
    state = json.loads((out / "checkpoint.json").read_text())
    assert state == {"step": 1, "adapter": "checkpoint-000001.gguf"}
    assert sorted(p.name for p in out.iterdir() if p.name != "tensorboard") == [
        "checkpoint-000001.gguf", "checkpoint.json", "config.json", "metrics.jsonl"]  # no temp files
    monkeypatch.setattr(GGUFWriter, "write_tensors_to_file", real)
    assert main(["train", "--resume", str(out)]) == 0  # and the run resumes from step 1


def test_the_first_signal_only_asks_the_loop_to_stop():
    # Raising from the handler could land inside llama.cpp's log callback, where ctypes drops it.
    from prge_gguf.train import GracefulStop

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with GracefulStop() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # the handler runs at the next bytecode
            assert stop.requested
            with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, previous)


def test_resume_keeps_where_the_run_computed_unless_told_otherwise(tmp_path, monkeypatch):
    # A run started with --n-gpu-layers -1 and resumed without it must not fall back to the CPU.
    from prge_gguf import job

    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "good", "label": 1}\n')
    out = tmp_path / "run"
    opened = []
    real_open = job.open_engine

    def record_open(args):
        opened.append((args.threads, args.n_gpu_layers, args.device))
        return real_open(args)

    monkeypatch.setattr(job, "open_engine", record_open)
    assert main(["train", "--task", "sst2", "--valid", str(valid), "--steps", "2", "--batch-size", "2",
                 "--targets", "attn_v", "--checkpoint-every", "1", "--eval-every", "0", "--threads", "1",
                 "--n-gpu-layers", "-1", "--out", str(out)]) == 0  # on a CPU build: no layers to offload
    assert json.loads((out / "config.json").read_text())["machine"] == {
        "threads": 1, "n_gpu_layers": -1, "device": "cpu", "parallel": None, "routing": None}
    assert main(["train", "--resume", str(out)]) == 0
    assert main(["train", "--resume", str(out), "--threads", "2"]) == 0
    assert opened == [(1, -1, "cpu"), (1, -1, "cpu"), (2, -1, "cpu")]


def test_a_failed_peft_write_keeps_the_previous_folder(tmp_path, model_path, monkeypatch):
    import errno

    import converters.peft
    from prge_gguf.errors import PrgeError
    from prge_gguf.gguf_header import read_header
    from prge_gguf.lora import init_lora_fa
    from prge_gguf.run_dir import RunDir

    header = read_header(model_path)
    adapter = init_lora_fa(header, ["attn_v"], 4, 8, seed=0)
    run = RunDir(tmp_path)
    run.save_peft(lambda tmp: converters.peft.to_peft_for(adapter, tmp, header))
    before = {p.name: p.read_bytes() for p in (tmp_path / "peft").iterdir()}
    real = converters.peft.to_peft_for

    def disk_full(adapter, out_dir, header):
        real(adapter, out_dir, header)  # files written, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(converters.peft, "to_peft_for", disk_full)
    with pytest.raises(PrgeError, match="cannot write the PEFT adapter .No space left on device.; "
                                        "adapter.gguf is intact"):
        changed = adapter.with_b({n: b + 1 for n, b in adapter.b.items()})
        run.save_peft(lambda tmp: converters.peft.to_peft_for(changed, tmp, header))
    assert {p.name: p.read_bytes() for p in (tmp_path / "peft").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "tensorboard") == ["peft"]  # no temp
    monkeypatch.setattr(converters.peft, "to_peft_for", real)
    real_rename = Path.rename

    def rename(self, target):  # the new folder cannot take the old one's place
        if self.name.endswith(".tmp"):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(PrgeError, match="Invalid cross-device link"):
        run.save_peft(lambda tmp: converters.peft.to_peft_for(changed, tmp, header))
    assert {p.name: p.read_bytes() for p in (tmp_path / "peft").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "tensorboard") == ["peft"]
    run.close()


def _small_run(out, valid, *extra):
    # Training rows beside the validation file: a few, so that a run is mostly its steps.
    train = valid.parent / "train.jsonl"
    if not train.exists():
        train.write_text("".join(f'{{"text": "{t}", "label": {y}}}\n' for t, y in
                                 [("a joy", 1), ("tedious", 0), ("superb", 1), ("awful", 0)]))
    return ["train", "--model", "smollm2-135m", "--task", "sst2", "--data", str(train), "--valid", str(valid),
            "--steps", "3", "--batch-size", "2",
            "--targets", "attn_v", "--lr", "1e-2", "--checkpoint-every", "1", "--eval-every", "1",
            "--threads", "2", "--out", str(out), *extra]


def test_ctrl_c_in_the_step_0_evaluation_leaves_a_run_that_resumes(tmp_path, monkeypatch, capsys):
    from prge_gguf import train

    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "good", "label": 1}\n')
    assert main(_small_run(tmp_path / "whole", valid)) == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "evaluate", interrupted)
    out = tmp_path / "stopped"
    assert main(_small_run(out, valid)) == 130
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 0
    monkeypatch.undo()
    assert main(["train", "--resume", str(out)]) == 0
    assert (out / "adapter.gguf").read_bytes() == (tmp_path / "whole" / "adapter.gguf").read_bytes()


def test_ctrl_c_while_the_run_folder_is_made_waits_for_its_config(tmp_path, model_path, monkeypatch):
    # A Ctrl-C between the folder's first file and config.json left a folder that --resume
    # called "not a run folder"; now it is raised once both are written.
    from prge_gguf.gguf_header import read_header
    from prge_gguf.lora import init_lora_fa
    from prge_gguf.run_dir import RunDir

    adapter = init_lora_fa(read_header(model_path), ["attn_v"], 8, 16.0, 0)
    save_checkpoint = RunDir.save_checkpoint

    def interrupted_while_saving(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        save_checkpoint(self, *args, **kwargs)

    monkeypatch.setattr(RunDir, "save_checkpoint", interrupted_while_saving)
    with pytest.raises(KeyboardInterrupt):
        RunDir.open_new(tmp_path / "run", {"train": {}}, adapter)
    monkeypatch.undo()
    run, config, step, resumed, _ = RunDir.open_resume(tmp_path / "run")
    run.close()
    assert (config, step) == ({"train": {}}, 0)
    assert all(np.array_equal(resumed.b[n], adapter.b[n]) for n in adapter.names)


def test_a_nan_at_step_1_keeps_the_step_0_checkpoint(tmp_path, capsys):
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "good", "label": 1}\n')
    out = tmp_path / "run"
    assert main(_small_run(out, valid, "--eps", "1e30")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("error: step 1: loss is nan; lower --lr or --eps in a new run "
                   "(the run folder keeps its checkpoint of step 0)")
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 0
    # Settings that define the run cannot change on resume; each is named.
    assert main(["train", "--resume", str(out), "--eps", "1e-2"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --eps: a resumed run keeps its saved setting (1e+30); "
                                               "drop --eps, or start a new run with --out")


def test_a_dead_start_is_reused_and_resume_extends_a_run(tmp_path, capsys):
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "good", "label": 1}\n')
    out = tmp_path / "run"
    out.mkdir()  # what a start killed before config.json leaves: its first checkpoint
    (out / "checkpoint-000000.gguf").write_bytes(b"half")
    (out / "checkpoint.json").write_text("{")
    assert main(_small_run(out, valid)) == 0
    assert main(["train", "--resume", str(out), "--steps", "5"]) == 0
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "loss" in r] == [1, 2, 3, 4, 5]
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 5
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--steps", "2"]) == 2
    assert capsys.readouterr().err.strip() == "error: --steps 2: the run's checkpoint is at step 5 already"


def test_a_run_started_with_relative_paths_resumes_from_another_folder(tmp_path, monkeypatch):
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "good", "label": 1}\n')
    monkeypatch.chdir(tmp_path)
    args = _small_run(Path("run"), Path("valid.jsonl"))
    args[args.index("--data") + 1] = "train.jsonl"
    assert main(args) == 0
    source = json.loads((tmp_path / "run" / "config.json").read_text())["source"]
    assert (source["data"], source["valid"]) == (str(tmp_path / "train.jsonl"), str(valid))
    monkeypatch.chdir("/")
    assert main(["train", "--resume", str(tmp_path / "run"), "--steps", "4",
                 "--valid", str(valid)]) == 0  # the same file, named another way: not a change
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["step"] == 4


def test_sigint_at_any_point_leaves_a_run_that_resumes_bit_identical(tmp_path):
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"text": "a joy to watch", "label": 1}\n{"text": "tedious", "label": 0}\n')
    cmd = [sys.executable, "-m", "prge_gguf", *_small_run(tmp_path / "whole", valid)[:-2]]
    t0 = time.monotonic()
    subprocess.run([*cmd, "--out", str(tmp_path / "whole")], check=True, capture_output=True)
    wall = time.monotonic() - t0
    want = (tmp_path / "whole" / "adapter.gguf").read_bytes()
    # Points spread over the run: model load, the step-0 evaluation, steps, checkpoint writes, the
    # final evaluation. Before the run folder exists, Ctrl-C leaves none.
    for k, fraction in enumerate((0.3, 0.5, 0.7, 0.9)):
        out = tmp_path / f"stopped{k}"
        proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(fraction * wall)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate()
        # -SIGINT: the signal came while the interpreter started or shut down, when Ctrl-C has its
        # default action (a shell reports 130 for it too); the checks below still hold.
        assert proc.returncode in (0, 130, -signal.SIGINT), err.decode()[-2000:]
        if not out.exists():
            continue
        assert main(["train", "--resume", str(out)]) == 0, f"stopped at {fraction:.0%} of the run"
        assert (out / "adapter.gguf").read_bytes() == want, f"stopped at {fraction:.0%} of the run"
