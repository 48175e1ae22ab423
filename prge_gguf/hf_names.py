"""GGUF projection names <-> Hugging Face module names, and the row orders that differ between
them. Pure names and numpy: the torch engine applies LoRA to Hugging Face modules with it, and
`converters.peft` writes and reads PEFT folders with it.

- llama.cpp names weights `blk.{i}.attn_q` ...; Hugging Face `model.layers.{i}.self_attn.q_proj`.
- For the llama architecture, llama.cpp's converter permutes the rows of the q and k projections
  (its RoPE layout), and lora_b with them; Hugging Face's order is the other.
- A GGUF may fuse q, k and v into one attn_qkv (Phi-3; any model converted with --fuse-qkv).
"""

from __future__ import annotations

import numpy as np

from prge_gguf.lora import LoraAdapter
from prge_gguf.targets import TARGET_NAME

# llama.cpp projection -> Hugging Face module path inside a decoder layer.
HF_MODULES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Where an architecture's Hugging Face modules differ: Phi-3 keeps q, k, v in one qkv_proj and
# gate, up in one gate_up_proj, rows in the same order as llama.cpp's attn_qkv and ffn_up (its
# converter copies them unchanged). Elsewhere a fused attn_qkv (--fuse-qkv) has no module.
_HF_FUSED = {"phi3": {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}}
# Architectures whose GGUF q/k rows are in llama.cpp's RoPE order rather than Hugging Face's:
# those convert_hf_to_gguf writes through LlamaModel with undo_permute (conversion/llama.py,
# granite.py).
_PERMUTED = {"llama", "smollm3", "granite", "granitemoe"}
# The projections a fused attn_qkv stacks, in its row order.
QKV = ("attn_q", "attn_k", "attn_v")


def hf_modules(architecture: str) -> dict[str, str]:
    """llama.cpp projection -> Hugging Face module path, for a model of `architecture`."""
    return HF_MODULES | _HF_FUSED.get(architecture, {})


def rope_rows_to_hf(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order: per head, rows (half, pair) -> (pair, half)."""
    out = rows.shape[0]
    return rows.reshape(n_head, out // n_head // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def rope_rows_to_gguf(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order from Hugging Face's (the inverse of `rope_rows_to_hf`)."""
    out = rows.shape[0]
    return rows.reshape(n_head, 2, out // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def lora_b_rows(b: np.ndarray, target: str, architecture: str, n_head: int, n_head_kv: int, *,
                to_hf: bool) -> np.ndarray:
    """lora_B with its rows in Hugging Face's order (`to_hf`) or back in the GGUF's: only the
    q/k projections of RoPE-permuted architectures differ."""
    if architecture not in _PERMUTED or target not in ("attn_q", "attn_k"):
        return b
    heads = n_head if target == "attn_q" else n_head_kv
    return (rope_rows_to_hf if to_hf else rope_rows_to_gguf)(b, heads)


def peft_targets(architecture: str) -> set[str]:
    """The projections a PEFT folder can hold for a model of `architecture` (attn_qkv always: as
    q, k, v where Hugging Face has no fused module)."""
    return {*hf_modules(architecture), "attn_qkv"}


def peft_unnamed(adapter: LoraAdapter) -> list[str]:
    """The tensors of `adapter` that no PEFT module stands for (`to_peft` refuses them)."""
    modules = peft_targets(adapter.architecture)
    return [n for n in adapter.names if not ((m := TARGET_NAME.match(n)) and m.group(2) in modules)]
