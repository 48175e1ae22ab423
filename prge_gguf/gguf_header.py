"""Fast reader of a GGUF file's header: metadata scalars and tensor infos, no tensor data.

`gguf.GGUFReader` builds Python objects for every vocabulary entry (~8 s for a
49k-token model on a small CPU); training and `info` need only a few keys and
the tensor shapes, so this walks the header once and skips arrays.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from gguf import GGMLQuantizationType

from prge_gguf.errors import PrgeError

_MAGIC = b"GGUF"
# GGUF value types -> struct format of one scalar (8 = string, 9 = array handled apart).
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file. `shape` is numpy order (rows, cols): GGUF stores dims reversed."""

    name: str
    shape: tuple[int, ...]
    type_name: str


@dataclass(frozen=True)
class GGUFHeader:
    """Metadata (scalars and strings; arrays as their length) and tensor infos of a GGUF file."""

    path: Path
    metadata: dict[str, object]
    tensors: dict[str, TensorInfo]

    @property
    def architecture(self) -> str:
        """`general.architecture` (e.g. llama, gemma3)."""
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def head_counts(self) -> tuple[int, int]:
        """(attention heads, key/value heads); 0 where the file does not say."""
        arch = self.architecture
        return (int(self.metadata.get(f"{arch}.attention.head_count", 0)),
                int(self.metadata.get(f"{arch}.attention.head_count_kv", 0)))


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> object:
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> object:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.unpack("I"), self.unpack("Q")
            if item_type == _STRING:
                for _ in range(count):
                    n = self.unpack("Q")
                    self.pos += n
            elif item_type in _SCALAR:
                self.pos += count * struct.calcsize(_SCALAR[item_type])
            else:
                for _ in range(count):
                    self.value(item_type)
            return count
        if vtype not in _SCALAR:
            raise ValueError(f"unknown GGUF value type {vtype}")
        return self.unpack(_SCALAR[vtype])


def read_header(path: str | Path) -> GGUFHeader:
    """Read a GGUF header; raise PrgeError naming the file if it is missing or not GGUF."""
    path = Path(path)
    if not path.is_file():
        raise PrgeError(f"{path}: file not found (expected a .gguf model or adapter file)")
    with path.open("rb") as fh:
        if fh.read(4) != _MAGIC:
            raise PrgeError(f"{path}: not a GGUF file (its first bytes are not 'GGUF')")
        fh.seek(0)
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                return _parse(path, _Cursor(buf))
            except (struct.error, ValueError, UnicodeDecodeError) as exc:
                raise PrgeError(f"{path}: truncated or corrupt GGUF header ({exc})") from None


def _parse(path: Path, cur: _Cursor) -> GGUFHeader:
    cur.pos = 4
    version = cur.unpack("I")
    if version not in (2, 3):
        raise PrgeError(f"{path}: GGUF version {version} is not supported (expected 2 or 3)")
    n_tensors, n_kv = cur.unpack("Q"), cur.unpack("Q")
    metadata: dict[str, object] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.unpack("I"))
    tensors: dict[str, TensorInfo] = {}
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.unpack("Q") for _ in range(cur.unpack("I"))]
        type_id = cur.unpack("I")
        cur.unpack("Q")  # data offset
        try:
            type_name = GGMLQuantizationType(type_id).name
        except ValueError:
            type_name = f"type{type_id}"
        tensors[name] = TensorInfo(name, tuple(reversed(dims)), type_name)
    return GGUFHeader(path, metadata, tensors)
