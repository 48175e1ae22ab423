"""LoRA adapter state (numpy float32 A and B per target tensor) and its GGUF file form.

Layout written is llama.cpp's adapter GGUF: `general.type=adapter`,
`adapter.type=lora`, `adapter.lora.alpha`, and per target weight
`<name>.lora_a` (numpy shape (r, in)) and `<name>.lora_b` ((out, r)); for a mixture of experts'
3-D expert weights, one pair per expert: (experts, r, in) and (experts, out, r).
llama.cpp applies W x + (alpha / r) * B (A x).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter

from prge_gguf import __version__
from prge_gguf.errors import PrgeError
from prge_gguf.gguf_header import GGUFHeader
from prge_gguf.outputs import publish
from prge_gguf.targets import ALL_TARGETS, DEFAULT_TARGETS, TARGET_NAME

_KEY_FINGERPRINT = "prge.base_fingerprint"
_ids = itertools.count()


def base_fingerprint(header: GGUFHeader) -> str:
    """A short hash of a base model's architecture and tensor names, shapes and types."""
    h = hashlib.sha256(header.architecture.encode())
    for info in sorted(header.tensors.values(), key=lambda t: t.name):
        h.update(f"{info.name}:{info.shape}:{info.type_name};".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class LoraAdapter:
    """An immutable LoRA adapter: `a[name]` (r, in) and `b[name]` (out, r), float32; expert
    weights have a leading experts axis on both.

    Names are base weight names (`blk.3.attn_q.weight`). Arrays are made read-only so
    that an engine may cache what it built from an adapter by `uid`.
    """

    architecture: str
    alpha: float
    a: dict[str, np.ndarray]
    b: dict[str, np.ndarray]
    fingerprint: str = ""
    uid: int = field(default_factory=lambda: next(_ids), compare=False)

    def __post_init__(self) -> None:
        if sorted(self.a) != sorted(self.b):
            raise ValueError("lora_a and lora_b must name the same tensors")
        for arr in itertools.chain(self.a.values(), self.b.values()):
            arr.flags.writeable = False

    @property
    def names(self) -> list[str]:
        """Target weight names in the fixed (sorted) order every random walk uses."""
        return sorted(self.a)

    @property
    def rank(self) -> int:
        """The LoRA rank r."""
        return next(iter(self.a.values())).shape[-2]

    @property
    def targets(self) -> list[str]:
        """The projections it adapts (attn_q, attn_v, ...), as --targets names them."""
        return sorted({m.group(2) for n in self.names if (m := TARGET_NAME.match(n))})

    @classmethod
    def load(cls, path: str | Path) -> LoraAdapter:
        """The adapter of a llama.cpp LoRA GGUF file (`read_gguf`)."""
        return read_gguf(path)

    def save(self, path: str | Path) -> None:
        """Write the adapter as a llama.cpp LoRA GGUF file (`write_gguf`), atomically."""
        write_gguf(self, path)

    def with_b(self, b: dict[str, np.ndarray]) -> LoraAdapter:
        """The same adapter (A shared, not copied) with new B tensors."""
        return LoraAdapter(self.architecture, self.alpha, self.a, b, self.fingerprint)

    def trainable(self, train_a: bool) -> dict[str, np.ndarray]:
        """The tensors a first-order step updates, by GGUF tensor name: every `<weight>.lora_b`
        and, with `train_a` (full LoRA rather than LoRA-FA), every `<weight>.lora_a`."""
        tensors = {f"{n}.lora_b": self.b[n] for n in self.names}
        if train_a:
            tensors |= {f"{n}.lora_a": self.a[n] for n in self.names}
        return tensors

    def with_tensors(self, tensors: Mapping[str, np.ndarray]) -> LoraAdapter:
        """The same adapter with the tensors that `tensors` names (as `trainable` does) replaced;
        the others shared, not copied."""
        a = {n: tensors.get(f"{n}.lora_a", self.a[n]) for n in self.names}
        b = {n: tensors.get(f"{n}.lora_b", self.b[n]) for n in self.names}
        return LoraAdapter(self.architecture, self.alpha, a, b, self.fingerprint)


def blocks_of(names: Iterable[str]) -> list[int]:
    """The block indices N of the `blk.N.*.weight` names among `names`, ascending."""
    return sorted({int(m.group(1)) for name in names if (m := TARGET_NAME.match(name))})


def num_layers_of(adapter: LoraAdapter, header: GGUFHeader) -> int:
    """The --num-layers that `adapter` was made with: how many of the model's last blocks it
    adapts, 0 when it adapts all of them (or a set that no --num-layers names)."""
    used, blocks = blocks_of(adapter.names), blocks_of(header.tensors)
    return len(used) if used and used != blocks and used == blocks[-len(used):] else 0


def model_targets(header: GGUFHeader) -> list[str]:
    """The projections of ALL_TARGETS that `header`'s model holds as block weights, in that order."""
    present = {m.group(2) for name in header.tensors if (m := TARGET_NAME.match(name))}
    return [t for t in ALL_TARGETS if t in present]


def untargeted(header: GGUFHeader) -> list[str]:
    """The block weights (2-D and more) that no target names, by projection: a mixture of
    experts' router, e.g., which llama.cpp could adapt but this tool does not."""
    present = model_targets(header)
    return sorted({m.group(2) for name, info in header.tensors.items()
                   if (m := TARGET_NAME.match(name)) and len(info.shape) > 1 and m.group(2) not in present})


def default_targets(header: GGUFHeader) -> list[str]:
    """DEFAULT_TARGETS (q and v); on a model whose q, k and v are fused, the fused weight."""
    present = model_targets(header)
    if all(t in present for t in DEFAULT_TARGETS) or "attn_qkv" not in present:
        return list(DEFAULT_TARGETS)
    return ["attn_qkv"]


def target_shapes(header: GGUFHeader, targets: list[str], num_layers: int = 0) -> dict[str, tuple[int, ...]]:
    """Map each targeted base weight name (of the last `num_layers` blocks; 0: of all) to its
    (out, in) shape, (experts, out, in) for expert weights; reject targets the model lacks and
    more layers than the model has."""
    present = model_targets(header)
    if not present:
        raise PrgeError(f"{header.path}: this {header.architecture} model has no weights LoRA can target "
                        f"(none of {', '.join(ALL_TARGETS)} in its blocks)")
    blocks = blocks_of(header.tensors)
    if num_layers > len(blocks):
        raise PrgeError(f"--num-layers: this {header.architecture} model has {len(blocks)} blocks, "
                        f"got {num_layers}")
    kept = set(blocks[-num_layers:]) if num_layers else set(blocks)
    for target in targets:
        if target not in present:
            fused = "; its q, k and v are one weight, attn_qkv" if "attn_qkv" in present else ""
            raise PrgeError(
                f"--targets: unknown target '{target}' for this {header.architecture} model "
                f"(expected some of: {', '.join(present)}{fused})"
            )
    shapes = {}
    for name, info in header.tensors.items():
        m = TARGET_NAME.match(name)
        if m and m.group(2) in targets and int(m.group(1)) in kept:
            shapes[name] = tuple(int(d) for d in info.shape)
    return dict(sorted(shapes.items()))


def check_rank(header: GGUFHeader, targets: list[str], rank: int, num_layers: int = 0
               ) -> dict[str, tuple[int, ...]]:
    """The target shapes (`target_shapes`), once `rank` is known to fit them: at least 1 and at
    most the smallest dimension of a target (a larger rank adds nothing and costs memory)."""
    shapes = target_shapes(header, targets, num_layers)
    if not shapes:
        raise PrgeError(f"--targets {','.join(targets)}: no such 2-D weights in this "
                        f"{header.architecture} model")
    if rank < 1:
        raise PrgeError(f"--rank must be >= 1, got {rank}")
    name, (*_, out_dim, in_dim) = min(shapes.items(), key=lambda item: min(item[1][-2:]))
    if rank > min(out_dim, in_dim):
        raise PrgeError(f"--rank {rank} is larger than {name}'s smaller dimension ({min(out_dim, in_dim)} "
                        f"of {out_dim} x {in_dim}): at most {min(out_dim, in_dim)}")
    return shapes


def init_lora_fa(
    header: GGUFHeader, targets: list[str], rank: int, alpha: float, seed: int, num_layers: int = 0
) -> LoraAdapter:
    """LoRA-FA start on `targets` of the last `num_layers` blocks (0: all): A kaiming-uniform
    (PEFT's bound 1/sqrt(in)), B zero."""
    rng = np.random.default_rng([seed, 0xA])
    a, b = {}, {}
    for name, (*experts, out_dim, in_dim) in check_rank(header, targets, rank, num_layers).items():
        bound = 1.0 / np.sqrt(in_dim)
        a[name] = rng.uniform(-bound, bound, size=(*experts, rank, in_dim)).astype(np.float32)
        b[name] = np.zeros((*experts, out_dim, rank), dtype=np.float32)
    return LoraAdapter(header.architecture, float(alpha), a, b, base_fingerprint(header))


@contextmanager
def atomic_gguf_writer(path: str | Path, architecture: str) -> Iterator[GGUFWriter]:
    """A GGUFWriter on a temp file beside `path`: written and renamed over `path` when the
    block ends, removed if anything fails (a crash leaves the old file or the new one)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = GGUFWriter(tmp, architecture)
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_gguf(adapter: LoraAdapter, path: str | Path, extra: dict[str, str] | None = None) -> None:
    """Write `adapter` as a llama.cpp LoRA GGUF, atomically (temp file + rename)."""
    with atomic_gguf_writer(path, adapter.architecture) as writer:
        writer.add_string("general.type", "adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", adapter.alpha)
        writer.add_string("prge.version", __version__)
        writer.add_string(_KEY_FINGERPRINT, adapter.fingerprint)
        for key, value in (extra or {}).items():
            writer.add_string(key, value)
        for name in adapter.names:
            stem = name.removesuffix(".weight")
            writer.add_tensor(f"{stem}.weight.lora_a", np.ascontiguousarray(adapter.a[name]))
            writer.add_tensor(f"{stem}.weight.lora_b", np.ascontiguousarray(adapter.b[name]))


def read_gguf(path: str | Path) -> LoraAdapter:
    """Read a LoRA adapter GGUF; every problem is reported at once, naming tensor and shape."""
    path = Path(path)
    if not path.is_file():
        raise PrgeError(f"{path}: adapter file not found")
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # gguf raises ValueError/struct.error/IndexError on bad files
        raise PrgeError(f"{path}: not a readable GGUF adapter ({exc})") from None

    def meta(key: str, default: object = None) -> object:
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    if meta("general.type") != "adapter" or meta("adapter.type") != "lora":
        raise PrgeError(f"{path}: not a LoRA adapter (general.type/adapter.type are not adapter/lora)")
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    a, b, problems = {}, {}, []
    for tname, arr in tensors.items():
        base, _, kind = tname.rpartition(".")
        if kind == "lora_a":
            a[base] = arr
        elif kind == "lora_b":
            b[base] = arr
        else:
            problems.append(f"{tname}: not a .lora_a/.lora_b tensor")
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            problems.append(f"{name}: has only one of lora_a/lora_b")
        elif a[name].shape[-2] != b[name].shape[-1] or a[name].shape[:-2] != b[name].shape[:-2]:
            problems.append(f"{name}: lora_a {a[name].shape} and lora_b {b[name].shape} ranks differ")
    if not a and not problems:
        problems.append("no LoRA tensors")
    if problems:
        raise PrgeError(f"{path}: bad adapter: " + "; ".join(problems))
    common = sorted(set(a) & set(b))
    return LoraAdapter(
        str(meta("general.architecture", "unknown")),
        float(meta("adapter.lora.alpha", a[common[0]].shape[-2])),
        {n: a[n] for n in common},
        {n: b[n] for n in common},
        str(meta(_KEY_FINGERPRINT, "")),
    )
