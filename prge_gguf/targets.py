"""The names of the GGUF weights a LoRA adapter can target: plain data, loaded by `--help` too."""

from __future__ import annotations

import re

# The seven projections of a transformer block, as llama.cpp names them (the paper's default set).
TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# Projections some architectures fuse into one weight: Phi-3 (and any GGUF converted with
# --fuse-qkv) stacks q, k and v's rows in attn_qkv. llama.cpp adds B(A x) to the fused product
# as to any weight, so a LoRA on it is one (A, B) pair. (Phi-3's fused gate and up rows keep the
# name ffn_up, already a target.)
FUSED_TARGETS = ("attn_qkv",)
# A mixture of experts' stacked expert weights (experts, out, in): llama.cpp applies a LoRA to
# each expert it routes a token to (ggml_mul_mat_id over A and B stacked the same way).
EXPERT_TARGETS = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
ALL_TARGETS = (*TARGETS, *FUSED_TARGETS, *EXPERT_TARGETS)
DEFAULT_TARGETS = ("attn_q", "attn_v")
# A block weight's GGUF name: groups (layer, projection).
TARGET_NAME = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")
