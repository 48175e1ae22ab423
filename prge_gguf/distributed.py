"""Ranks of one training job (torch.distributed, gloo) and the few floats they exchange.

P-RGE needs no gradient exchange: every rank knows every seed, so z_i is the
same everywhere. A step's 2q perturbed evaluations (B + eps z_i, B - eps z_i)
are dealt out round-robin; each rank scores its own over the whole minibatch
and the ranks all-reduce the 2q mean losses, each slot filled by one rank and
zero elsewhere, so the sum is exact (x + 0 = x) and every rank applies the
bit-identical update. The minibatch is not split: llama.cpp's logits depend on
which sequences share a decode (docs/design.md, Decisions), and splitting it would make
the result depend on the number of ranks.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping

import numpy as np

from prge_gguf.errors import PrgeError


class RankLost(PrgeError):
    """Another rank stopped answering; the job cannot go on."""


class Workers:
    """This process's place in the job: `rank` of `size`. One process alone is rank 0 of 1
    and exchanges nothing; `join()` joins the job torchrun started."""

    def __init__(self, rank: int = 0, size: int = 1) -> None:
        self.rank, self.size = rank, size
        self.bytes_sent = 0  # payload this rank contributed to collectives, summed
        self.comm_s = 0.0  # seconds spent in (and waiting at) collectives

    @classmethod
    def join(cls) -> Workers:
        """Join the process group described by torchrun's environment (RANK, WORLD_SIZE,
        MASTER_ADDR, MASTER_PORT), over gloo."""
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise PrgeError(f"--distributed needs torchrun's environment ({', '.join(missing)} unset): "
                            "run 'torchrun --nproc_per_node N -m prge_gguf train ... --distributed'")
        try:
            import torch.distributed as dist
        except ImportError:
            raise PrgeError("--distributed needs torch: pip install 'prge-gguf[torch]'") from None
        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder and prints."""
        return self.rank == 0

    def mine(self, n: int) -> list[int]:
        """Which of `n` work items (perturbations, evaluation chunks) this rank does: every
        size-th one."""
        return list(range(self.rank, n, self.size))

    def combine(self, values: np.ndarray) -> np.ndarray:
        """Sum over ranks of `values` (float64), where each rank filled only its own slots and left
        zeros elsewhere: every rank gets the same, exact, full array."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        if self.size == 1:
            return values
        import torch
        import torch.distributed as dist

        tensor = torch.from_numpy(values.copy())
        self._collective(lambda: dist.all_reduce(tensor), values.nbytes)
        return tensor.numpy()

    def check_same(self, tensors: Mapping[str, np.ndarray], step: int) -> str:
        """Hash of `tensors`; raises if any rank holds different ones (the ranks diverged)."""
        digest = hashlib.sha256()
        for name in sorted(tensors):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(tensors[name]).tobytes())
        hex_digest = digest.hexdigest()[:16]
        if self.size > 1:
            import torch
            import torch.distributed as dist

            mine = torch.tensor([int(hex_digest, 16) - 2**63], dtype=torch.int64)
            every = [torch.empty_like(mine) for _ in range(self.size)]
            self._collective(lambda: dist.all_gather(every, mine), mine.numel() * 8)
            if len({int(t) for t in every}) != 1:
                raise PrgeError(f"step {step}: the ranks hold different adapters (hashes "
                                f"{[format(int(t) + 2**63, '016x') for t in every]}); please report this")
        return hex_digest

    def _collective(self, call, nbytes: int) -> None:
        t0 = time.perf_counter()
        try:
            call()
        except RuntimeError as exc:  # gloo reports a dead peer as a RuntimeError subclass
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RankLost(f"rank {self.rank}: lost contact with the other ranks ({first}); "
                           "the run folder's last checkpoint is valid: continue with --resume") from None
        self.comm_s += time.perf_counter() - t0
        self.bytes_sent += nbytes

    def close(self) -> None:
        """Leave the process group."""
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
