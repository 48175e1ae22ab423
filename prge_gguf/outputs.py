"""Where the tool writes: one rule for every output.

The tool never writes over a file it did not create: an existing output needs `--force`
(or a new name), and an input is never an output, `--force` or not. Files are published
atomically (temp file + rename) with the mode the user's umask gives a new file.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from prge_gguf.errors import PrgeError

# What `train` writes into a run folder; the first checkpoint comes before config.json, the
# marker of a run, so a folder holding only _LEFTOVER files is a start that died before it.
_LEFTOVER = r"checkpoint\.json|checkpoint-\d+\.gguf|optimizer-\d+\.npz|\..+\.tmp"
_RUN_FILE = re.compile(
    rf"^({_LEFTOVER}|config\.json|metrics\.jsonl|adapter\.gguf|best\.gguf|peft|tensorboard)$")
_LEFTOVER_FILE = re.compile(rf"^({_LEFTOVER})$")
RUN_MARKER = "config.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode the user's umask gives a new file (0644 under the usual 022)."""
    return 0o666 & ~_umask()


def publish(tmp: str | Path, path: str | Path) -> None:
    """Give the finished temp file `tmp` a new file's mode and rename it over `path`
    (mkstemp makes 0600 files, which e.g. an Ollama service user cannot read)."""
    os.chmod(tmp, new_file_mode())
    os.replace(tmp, path)


def replace_folder(path: Path, build: Callable[[Path], object]) -> None:
    """Make the folder `path` by `build(tmp)` on a temp folder beside it, then rename it into
    place (an old `path` goes only once the new one is complete); on failure the old one stays."""
    new = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old = path.parent / f".{path.name}.old"
    try:
        build(new)
        # mkdtemp makes the folder 0700, and some writers (safetensors) their files 0600.
        new.chmod(0o777 & ~_umask())
        for file in new.iterdir():
            file.chmod(new_file_mode())
        if path.exists():
            path.rename(old)
        new.rename(path)
    except OSError:
        if old.exists() and not path.exists():  # the new folder failed to take its place
            old.rename(path)
        raise
    finally:
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _writable_parent(path: Path, flag: str) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise PrgeError(f"{flag} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PrgeError(f"{flag} {path}: folder {parent} is not writable")


def _writable_folder(path: Path, flag: str) -> None:
    if not os.access(path, os.W_OK | os.X_OK):
        raise PrgeError(f"{flag} {path}: folder is not writable")


def _not_an_input(path: Path, inputs: Iterable[str | Path | None], flag: str) -> None:
    for given in inputs:
        if given and Path(given).exists() and _same(Path(given), path):
            raise PrgeError(f"{flag} {path} is also an input of this command: choose another output")


def check_output_file(path: str | Path, *, force: bool, inputs: Iterable[str | Path | None] = (),
                      flag: str = "--out") -> Path:
    """`path` as a file this command may write: not an input, not a folder, in a writable
    folder, and new unless `force`."""
    path = Path(path)
    _not_an_input(path, inputs, flag)
    if path.is_dir():
        raise PrgeError(f"{flag} {path} is a folder: expected a file name")
    if path.exists() and not force:
        raise PrgeError(f"{flag} {path} exists: pass --force to replace it, or choose another name")
    _writable_parent(path, flag)
    return path


def check_output_folder(path: str | Path, *, force: bool, inputs: Iterable[str | Path | None] = (),
                        flag: str = "--out") -> Path:
    """`path` as a folder this command may write into: not a file, not holding an input, and
    new or empty unless `force`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PrgeError(f"{flag} {path} is a file: expected a folder")
    for given in inputs:
        if given and Path(given).exists() and _same(Path(given).parent, path):
            raise PrgeError(f"{flag} {path} holds {given}, an input of this command: choose another folder")
    if path.is_dir():
        if any(path.iterdir()) and not force:
            raise PrgeError(f"{flag} {path} is not empty: pass --force to write into it, or choose another")
        _writable_folder(path, flag)
    else:
        _writable_parent(path, flag)
    return path


def check_run_folder(path: str | Path, *, force: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """`path` as a new run's folder: not a run already (resume that), new or holding only a dead
    start's files, or, with `force`, other files too; never one that holds an input under a
    name the run writes."""
    path = Path(path)
    if (path / RUN_MARKER).exists():
        raise PrgeError(f"{path}: already holds a run ({RUN_MARKER}); choose another --out, "
                        "resume it with --resume, or remove it")
    if path.exists() and not path.is_dir():
        raise PrgeError(f"--out {path} is a file: expected a folder")
    for given in map(Path, filter(None, inputs)):
        if given.exists() and _same(given.parent, path) and _RUN_FILE.match(given.name):
            raise PrgeError(f"--out {path}: the run would write over {given}, an input of this command: "
                            "choose another folder")
    if path.is_dir():
        others = sorted(p.name for p in path.iterdir() if not _LEFTOVER_FILE.match(p.name))
        if others and not force:
            raise PrgeError(f"--out {path} holds other files ({', '.join(others[:3])}"
                            f"{', ...' if len(others) > 3 else ''}): pass --force to write the run "
                            "beside them, or choose another folder")
        _writable_folder(path, "--out")
    else:
        existing = next(p for p in path.absolute().parents if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise PrgeError(f"--out {path}: cannot create it ({existing} is not a writable folder)")
    return path
