"""The run folder: config.json, metrics.jsonl, adapter.gguf and the resumable checkpoint.

Every file that training rewrites is replaced atomically (temp file + rename),
so a run killed at any instant leaves either the old or the new version. The
checkpoint is `checkpoint-<step>.gguf` (the adapter: A and B) and, for Adam,
`optimizer-<step>.npz` (its moments), committed by `checkpoint.json` naming
them; batch order and every z derive from (seed, step), so the step number is
all the rest of the state.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from prge_gguf.errors import PrgeError
from prge_gguf.lora import LoraAdapter, read_gguf, write_gguf
from prge_gguf.outputs import RUN_MARKER, publish, replace_folder
from prge_gguf.signals import sigint_held


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace `path` with what `write` writes to the binary file it gets, atomically (a crash
    leaves the old file or the new one)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically."""
    write_atomic(path, lambda fh: fh.write(text.encode()))


class RunDir:
    """Writes one training run's folder; `open_new` starts one, `open_resume` continues one."""

    def __init__(self, path: Path, writable: bool = True, evals: list[dict] | None = None) -> None:
        """A run folder; `writable=False` (ranks other than 0 of a distributed job) writes nothing."""
        self.path, self.writable = path, writable
        self._evals = evals or []
        self._committed: set[str] = set()  # the files checkpoint.json names now
        self.checkpoint_step: int | None = None  # the step checkpoint.json names now
        self.on_row: Callable[[dict], None] | None = None  # also gets every metrics row
        self._metrics = None
        self._tensorboard = None  # made at the first metrics row: a run's folder holds config.json first

    @classmethod
    def open_new(cls, path: Path, config: dict, adapter: LoraAdapter,
                 optimizer: Mapping[str, np.ndarray] | None = None) -> RunDir:
        """Start a run in `path` (checked by `outputs.check_run_folder`): the step-0 checkpoint
        first, then config.json, so that a run stopped at any point after this resumes. A Ctrl-C
        waits until both are written: a folder without config.json cannot be resumed."""
        if (path / RUN_MARKER).exists():
            raise PrgeError(f"{path}: already holds a run ({RUN_MARKER}); resume it with --resume")
        with sigint_held():
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PrgeError(f"--out {path}: cannot create the run folder "
                                f"({exc.strerror or exc})") from None
            run = cls(path)
            run.save_checkpoint(adapter, 0, optimizer)
            run.rewrite_config(config)
        run._metrics = (path / "metrics.jsonl").open("a")
        return run

    def rewrite_config(self, config: dict) -> None:
        """Write config.json (atomically): the settings the run resumes with."""
        if self.writable:
            write_text_atomic(self.path / RUN_MARKER, json.dumps(config, indent=2, sort_keys=True) + "\n")

    @staticmethod
    def saved_config(path: Path) -> dict:
        """config.json of the run folder `path`, read without touching anything else; empty where
        there is none or it is unreadable (`open_resume` says which)."""
        try:
            config = json.loads((path / RUN_MARKER).read_text())
        except (OSError, ValueError):
            return {}
        return config if isinstance(config, dict) else {}

    @staticmethod
    def saved_machine(path: Path) -> dict:
        """The machine settings (threads, GPU layers, device) a run folder was started with; empty
        where it has none (older runs) or is no run folder (`open_resume` says so)."""
        return RunDir.saved_config(path).get("machine", {})

    @classmethod
    def open_resume(cls, path: Path, writable: bool = True
                    ) -> tuple[RunDir, dict, int, LoraAdapter, dict[str, np.ndarray]]:
        """(run, saved config, step, adapter, optimizer state: empty but for Adam) of the last
        checkpoint in `path`.

        Metrics logged after that checkpoint are dropped: the resumed run logs them again.
        """
        config_file, state_file = path / "config.json", path / "checkpoint.json"
        if not config_file.is_file():
            raise PrgeError(f"{path}: not a run folder (no config.json)")
        if not state_file.is_file():
            raise PrgeError(f"{path}: no checkpoint to resume from (checkpoint.json missing)")
        config = json.loads(config_file.read_text())
        state = json.loads(state_file.read_text())
        step, adapter = int(state["step"]), read_gguf(path / state["adapter"])
        optimizer = _read_arrays(path / state["optimizer"]) if "optimizer" in state else {}
        metrics = path / "metrics.jsonl"
        kept = [line for line in (metrics.read_text().splitlines() if metrics.exists() else [])
                if line.strip() and json.loads(line).get("step", 0) <= step]
        run = cls(path, writable, [row for line in kept if "eval_loss" in (row := json.loads(line))])
        run._committed = {name for key, name in state.items() if key != "step"}
        run.checkpoint_step = step
        if writable:
            write_text_atomic(metrics, "".join(line + "\n" for line in kept))
            run._metrics = metrics.open("a")
        return run, config, step, adapter, optimizer

    def metrics(self, row: dict) -> None:
        """Append one row to metrics.jsonl (flushed, so a killed run keeps what it logged);
        mirror its numbers to TensorBoard when tensorboardX is installed."""
        if "eval_loss" in row:
            self._evals.append(row)
        if self.on_row is not None:
            self.on_row(dict(row))
        if not self.writable:
            return
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self._tensorboard is None:
            self._tensorboard = _tensorboard_writer(self.path / "tensorboard")
        if self._tensorboard:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, row.get("step", 0))
            self._tensorboard.flush()

    def eval_history(self) -> list[dict]:
        """The evaluation rows logged so far (on resume: up to the checkpoint)."""
        return list(self._evals)

    def save_adapter(self, adapter: LoraAdapter, extra: dict[str, str], name: str = "adapter.gguf") -> Path:
        """Write `adapter` as `name` in the run folder (atomically)."""
        path = self.path / name
        if not self.writable:
            return path
        try:
            write_gguf(adapter, path, extra)
        except OSError as exc:
            raise PrgeError(f"{path}: cannot write the adapter ({exc.strerror or exc}); "
                            "the previous version is intact") from None
        return path

    def save_peft(self, write: Callable[[Path], object]) -> Path:
        """Make the PEFT folder `peft/`: `write` fills a fresh folder that then replaces it
        (`replace_folder`). The caller brings the converter; the run folder knows no formats."""
        path = self.path / "peft"
        if not self.writable:
            return path
        try:
            replace_folder(path, write)
        except OSError as exc:
            raise PrgeError(f"{path}: cannot write the PEFT adapter ({exc.strerror or exc}); "
                            "adapter.gguf is intact ('prge-gguf export' converts it)") from None
        return path

    def save_checkpoint(self, adapter: LoraAdapter, step: int,
                        optimizer: Mapping[str, np.ndarray] | None = None) -> None:
        """Write checkpoint-<step>.gguf and, given an optimizer state (Adam's moments),
        optimizer-<step>.npz; commit them in checkpoint.json, then drop older ones."""
        if not self.writable:
            return
        files = {"adapter": f"checkpoint-{step:06d}.gguf"}
        if optimizer:
            files["optimizer"] = f"optimizer-{step:06d}.npz"
        try:
            write_gguf(adapter, self.path / files["adapter"], {"prge.step": str(step)})
            if optimizer:
                write_atomic(self.path / files["optimizer"], lambda fh: np.savez(fh, **optimizer))
            write_text_atomic(self.path / "checkpoint.json", json.dumps({"step": step, **files}) + "\n")
        except OSError as exc:
            # New files the commit did not reach go; the committed checkpoint's (same step) stay.
            for name in set(files.values()) - self._committed:
                (self.path / name).unlink(missing_ok=True)
            raise PrgeError(f"{self.path / files['adapter']}: cannot write the checkpoint "
                            f"({exc.strerror or exc}); the previous checkpoint is intact") from None
        self._committed, self.checkpoint_step = set(files.values()), step
        for old in [*self.path.glob("checkpoint-*.gguf"), *self.path.glob("optimizer-*.npz")]:
            if old.name not in self._committed:
                old.unlink()

    def close(self) -> None:
        """Close metrics.jsonl and the TensorBoard writer."""
        if self._metrics is not None:
            self._metrics.close()
        if self._tensorboard:
            self._tensorboard.close()


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz that save_checkpoint wrote (an optimizer state)."""
    try:
        with np.load(path) as saved:
            return {key: saved[key] for key in saved.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise PrgeError(f"{path}: cannot read the checkpoint's optimizer state "
                        f"({getattr(exc, 'strerror', None) or exc})") from None


def _tensorboard_writer(logdir: Path):
    """A tensorboardX SummaryWriter when that optional package is installed, else False."""
    # tensorboardX imports torch if it can (~170 MB of RSS, for tensor inputs we never pass):
    # a None entry in sys.modules makes that `import torch` fail, unless torch is already in.
    hide_torch = "torch" not in sys.modules
    if hide_torch:
        sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return False
    finally:
        if hide_torch:
            del sys.modules["torch"]
    return SummaryWriter(str(logdir))
