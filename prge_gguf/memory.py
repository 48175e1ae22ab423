"""What a training run will take in memory, estimated before the model loads, against what the
machine has free: a run that cannot fit stops with one line instead of being killed minutes in."""

from __future__ import annotations

import math
from pathlib import Path

from prge_gguf.errors import PrgeError
from prge_gguf.gguf_header import GGUFHeader
from prge_gguf.settings import PARALLEL_GPU

_KV_BYTES = 2  # llama.cpp's KV cache holds f16 keys and values
_SEQS_PER_DECODE = 64  # rows of logits a decode returns at most (the engine's n_seq_max)


def train_bytes(header: GGUFHeader, shapes: dict[str, tuple[int, ...]], rank: int, q: int, n_ctx: int
                ) -> int:
    """Bytes a P-RGE run needs, from above: the model file (mapped, so paged in as it is read),
    the KV cache and logits of one decode in each context a step can use (min(2q, PARALLEL_GPU),
    the most --parallel's default makes), and float32 copies of the adapter: the trained one, its
    2q perturbations, the next one and the engine's loaded pair."""
    md, arch = header.metadata, header.architecture
    n_layer = int(md.get(f"{arch}.block_count", 0))
    n_embd = int(md.get(f"{arch}.embedding_length", 0))
    n_head, n_head_kv = header.head_counts
    kv = n_ctx * n_layer * 2 * (n_embd * n_head_kv // max(n_head, 1)) * _KV_BYTES
    n_vocab = int(md.get("tokenizer.ggml.tokens", 0))  # the header keeps an array's length
    logits = _SEQS_PER_DECODE * n_vocab * 4
    adapter = 4 * sum(math.prod(experts) * rank * (out_dim + in_dim)
                      for *experts, out_dim, in_dim in shapes.values())
    contexts = min(2 * q, PARALLEL_GPU)
    return Path(header.path).stat().st_size + (kv + logits) * contexts + adapter * (2 * q + 4)


def default_train_bytes(header: GGUFHeader) -> tuple[int, str]:
    """`train_bytes` at `prge-gguf train`'s defaults on a CPU, as train resolves them: TrainConfig's
    rank and q, the model's default targets on all blocks, and the CPU decode cap (what train
    estimates with when --n-ctx is not given); with those settings in words."""
    from prge_gguf.lora import check_rank, default_targets
    from prge_gguf.settings import CPU_MAX_N_CTX
    from prge_gguf.train_config import TrainConfig

    cfg = TrainConfig(targets=default_targets(header))
    shapes = check_rank(header, cfg.targets, cfg.rank, cfg.num_layers)
    settings = f"rank {cfg.rank}, q {cfg.q}, {'+'.join(cfg.targets)}, n_ctx {CPU_MAX_N_CTX}"
    return train_bytes(header, shapes, cfg.rank, cfg.q, CPU_MAX_N_CTX), settings


def describe_default_run(header: GGUFHeader) -> str:
    """One line for `prge-gguf info`: the memory a training run at the defaults needs, and the
    memory free now."""
    try:
        needed, settings = default_train_bytes(header)
    except PrgeError as exc:  # a target narrower than the default rank, e.g.
        return f"train memory:  not estimated: train at the defaults would stop ({exc})"
    free = available_bytes()
    return (f"train memory:  about {size_text(needed)} at the defaults ({settings}); "
            f"free now: {'unknown' if free is None else size_text(free)}")


def size_text(n_bytes: int) -> str:
    """Bytes as MiB below 1 GiB, else GiB with one decimal."""
    return f"{n_bytes / 2**20:.0f} MiB" if n_bytes < 2**30 else f"{n_bytes / 2**30:.1f} GiB"


def available_bytes() -> int | None:
    """Memory the kernel can give without swapping (Linux's MemAvailable); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_fits(needed: int) -> None:
    """Refuse a run whose estimate is more than the machine has free."""
    free = available_bytes()
    if free is not None and needed > free:
        raise PrgeError(f"this run needs about {needed / 2**30:.1f} GiB of memory and {free / 2**30:.1f} GiB "
                        "is free: lower --rank, --q, --n-ctx or the targets, or use a smaller model")
