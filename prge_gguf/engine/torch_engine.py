"""Reference engine: the same GGUF dequantized by transformers, LoRA applied in torch.

It implements the paper's multi-perturbed LoRA: `score_each` repeats the batch
K times and gives slice k its own B (B stacked as (K, out, r)), so all 2q
perturbations of a step run in ONE forward. Needs the `torch` extra.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import accumulate
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import numpy as np

from prge_gguf.engine.base import AdapterSet
from prge_gguf.errors import PrgeError
from prge_gguf.gguf_header import read_header
from prge_gguf.hf_names import hf_modules, lora_b_rows
from prge_gguf.lora import LoraAdapter
from prge_gguf.scoring import ScoreRequest, TokenizedExample
from prge_gguf.targets import TARGET_NAME

try:
    import torch
except ImportError:  # pragma: no cover - the message is the point
    torch = None

_LogProbs = TypeVar("_LogProbs", np.ndarray, "torch.Tensor")  # on the CPU, or on the device
# Values in one (k, positions, vocab) float64 log-softmax block (128 MiB): a language-modelling
# chunk scores up to `batch_tokens` positions, each over a vocabulary of 50k-250k.
_SOFTMAX_VALUES = 1 << 24
# Older transformers read a Gemma 3 GGUF's tokenizer wrongly: 5.20-5.22 leave out its <bos>, 5.17
# also cuts words into other pieces ("Review" as "Re" "view"). The model then scores other texts
# than llama.cpp does (SST-2 zero-shot 45% against 62%), with no error.
MIN_TRANSFORMERS = (5, 23)


def _torch_loss(ex: TokenizedExample, results: list[list[torch.Tensor]], kind: str) -> torch.Tensor:
    """`scoring.option_scores` + `scoring.example_loss` on differentiable log-probs (on their device)."""
    device = results[0][0].device
    scores = torch.zeros(ex.n_options, dtype=torch.float64, device=device)
    for req_owners, req_results in zip(ex.owners, results, strict=True):
        for pos_owners, logprobs in zip(req_owners, req_results, strict=True):
            scores = scores.index_add(0, torch.tensor(pos_owners, device=device), logprobs)
    if ex.n_scored:
        return -scores[0] / ex.n_scored
    if kind == "vocab":
        return -scores[ex.label]
    return torch.logsumexp(scores, 0) - scores[ex.label]


def _by_request(logprobs: _LogProbs, requests: Sequence[ScoreRequest]) -> list[list[_LogProbs]]:
    """One slice's candidate log-probs, flat in request, position, candidate order, split per
    request and per position; slices, so gradients flow through."""
    out, i = [], 0
    for r in requests:
        per_position = []
        for c in r.candidates:
            per_position.append(logprobs[i : i + len(c)])
            i += len(c)
        out.append(per_position)
    return out


class _LoraHook:
    """Adds sum_j scale_j * B_j (A x) per batch slice to a Linear's output."""

    def __init__(self) -> None:
        self.a: torch.Tensor | None = None  # (r, in), shared by every slice
        self.b: torch.Tensor | None = None  # (K, out, r)
        self.scale = 1.0

    def __call__(self, module, inputs, output):
        if self.a is None:
            return output
        x = inputs[0]
        k = self.b.shape[0]
        xa = torch.einsum("kn...i,ri->kn...r", x.reshape(k, -1, *x.shape[1:]), self.a)
        delta = torch.einsum("kn...r,kor->kn...o", xa, self.b)
        return output + self.scale * delta.reshape(output.shape)


def _release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string such as '5.24.0', '5.23.0.dev0' or '5.25rc1'."""
    return tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", version).groups())


class TorchEngine:
    """Scores sequences with transformers in fp32 (or the dtype given), padded to a batch."""

    backprop = True  # loss_gradient: the first-order baseline
    timings: Mapping[str, float] = MappingProxyType({})  # its scoring time is not split into parts

    def __init__(self, model_path: str | Path, *, device: str = "cpu", n_ctx: int = 1024,
                 threads: int | None = None, batch_tokens: int = 8192, dtype: str = "float32") -> None:
        """The GGUF at `model_path` dequantized to `dtype` (float64 for checks that float32's
        rounding would blur, e.g. finite differences) on `device`."""
        if torch is None:
            raise PrgeError("the torch engine needs: pip install 'prge-gguf[torch]'")
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if _release(transformers.__version__) < MIN_TRANSFORMERS:
            raise PrgeError(f"the torch engine needs transformers >= {'.'.join(map(str, MIN_TRANSFORMERS))} "
                            f"(found {transformers.__version__}, which tokenizes some GGUFs unlike "
                            "llama.cpp): pip install 'prge-gguf[torch]'")

        self.model_path = Path(model_path)
        self.header = read_header(self.model_path)
        arch = self.header.architecture
        fused = any(n.endswith(".attn_qkv.weight") for n in self.header.tensors)
        if fused and "attn_qkv" not in hf_modules(arch):
            # transformers' GGUF loader skips the tensor and leaves q, k, v randomly initialised.
            raise PrgeError(f"{self.model_path}: transformers cannot read the fused attn_qkv of a "
                            f"{arch} model (use --engine llama)")
        self.n_ctx, self.device, self._batch_tokens = n_ctx, torch.device(device), batch_tokens
        self.dtype = getattr(torch, dtype)
        if threads:
            torch.set_num_threads(threads)
        kwargs = {"gguf_file": self.model_path.name}
        self.model = AutoModelForCausalLM.from_pretrained(
            str(self.model_path.parent), dtype=self.dtype, **kwargs).to(self.device).eval()
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_path.parent), **kwargs)
        self.n_vocab = self.model.config.vocab_size
        self._hooks: dict[str, _LoraHook] = {}
        layers, modules = self.model.model.layers, hf_modules(self.header.architecture)
        for name in self.header.tensors:
            m = TARGET_NAME.match(name)
            if m and m.group(2) in modules:
                module = layers[int(m.group(1))].get_submodule(modules[m.group(2)])
                hook = self._hooks[name] = _LoraHook()
                module.register_forward_hook(hook)

    chat_template = None  # chat rendering is the llama engine's job; this one serves references

    def tokenize(self, text: str, add_special: bool, parse_special: bool = False) -> list[int]:
        """Token ids from the Hugging Face tokenizer of the same GGUF."""
        return self._tokenizer.encode(text, add_special_tokens=add_special)

    def special_tokens(self) -> dict[str, str]:
        """`bos_token` and `eos_token` texts of the Hugging Face tokenizer."""
        return {"bos_token": self._tokenizer.bos_token or "", "eos_token": self._tokenizer.eos_token or ""}

    def set_context(self, n_ctx: int) -> None:
        """Record the bound (torch pads each batch to its longest sequence; nothing is sized by it)."""
        self.n_ctx = n_ctx

    def _b_rows(self, name: str, b: np.ndarray, back: bool = False) -> np.ndarray:
        """B rows in transformers' order (or, `back`, in the GGUF order again)."""
        return lora_b_rows(b, TARGET_NAME.match(name).group(2), self.header.architecture,
                           *self.header.head_counts, to_hf=not back)

    def _install(self, adapters: Sequence[LoraAdapter]) -> None:
        """Stack the adapters' B per target (one slice each); A must be shared (LoRA-FA)."""
        for hook in self._hooks.values():
            hook.a = hook.b = None
        if not adapters:
            return
        first = adapters[0]
        for name in first.names:
            if name not in self._hooks:
                raise PrgeError(f"{name}: the adapter targets a tensor this model does not have")
            if any(a.a[name] is not first.a[name] and not np.array_equal(a.a[name], first.a[name])
                   for a in adapters[1:]):
                raise PrgeError("score_each needs adapters that share A (LoRA-FA perturbations)")
            hook = self._hooks[name]
            hook.a = torch.from_numpy(np.array(first.a[name])).to(self.device, self.dtype)
            stacked = np.stack([self._b_rows(name, a.b[name]) for a in adapters])
            hook.b = torch.from_numpy(stacked).to(self.device, self.dtype)
            hook.scale = first.alpha / first.rank

    def score(self, requests: Sequence[ScoreRequest], adapters: AdapterSet) -> list[list[np.ndarray]]:
        """Log-probs of each request's candidates; adapters at scale 1 (LoRA-FA sets)."""
        if any(scale != 1.0 for _, scale in adapters) or len(adapters) > 1:
            raise PrgeError("the torch engine applies one adapter at scale 1")
        if adapters:
            return self.score_each(requests, [a for a, _ in adapters])[0]
        return self._forward(requests, 1)[0]

    def score_each(self, requests: Sequence[ScoreRequest],
                   adapters: Sequence[LoraAdapter]) -> list[list[list[np.ndarray]]]:
        """All adapters in one forward per chunk of requests: the batch repeated per adapter."""
        self._install(adapters)
        try:
            return self._forward(requests, len(adapters))
        finally:
            self._install([])

    def _forward(self, requests: Sequence[ScoreRequest], k: int) -> list[list[list[np.ndarray]]]:
        with torch.no_grad():
            logprobs = self._candidate_logprobs(requests, k).cpu().numpy()  # one transfer, one sync
        return [_by_request(slot, requests) for slot in logprobs]

    def loss_gradient(self, batch: Sequence[TokenizedExample], adapter: LoraAdapter, loss: str,
                      train_a: bool = False) -> tuple[float, dict[str, np.ndarray]]:
        """Mean loss over `batch` and its exact gradient by backpropagation (the first-order
        baseline), keyed as `adapter.trainable(train_a)`: every B (GGUF row order) and, with
        `train_a`, every A."""
        self._install([adapter])
        try:
            hooks = {name: self._hooks[name] for name in adapter.names}
            for hook in hooks.values():
                hook.b.requires_grad_(True)
                hook.a.requires_grad_(train_a)
            requests = [r for ex in batch for r in ex.requests]
            with torch.enable_grad():
                results = _by_request(self._candidate_logprobs(requests, 1)[0], requests)
                total, i = 0.0, 0
                for ex in batch:
                    total = total + _torch_loss(ex, results[i : i + len(ex.requests)], loss)
                    i += len(ex.requests)
                mean = total / len(batch)
                mean.backward()
            # Adapters are float32 whatever the model computes in.
            grads = {f"{n}.lora_b": self._b_rows(n, h.b.grad[0].float().cpu().numpy(), back=True)
                     for n, h in hooks.items()}
            if train_a:  # A's columns are the input features: no row order to undo
                grads |= {f"{n}.lora_a": h.a.grad.float().cpu().numpy() for n, h in hooks.items()}
            return float(mean.detach()), grads
        finally:
            self._install([])

    def _candidate_logprobs(self, requests: Sequence[ScoreRequest], k: int) -> torch.Tensor:
        """(k, candidates) float64: the log-prob of every candidate of `requests` (in request,
        position, candidate order) under each of the k installed adapters; one forward per
        chunk of at most `batch_tokens` tokens (the k slices included)."""
        longest = max(r.n_tokens for r in requests)
        per_chunk = max(1, self._batch_tokens // (k * longest))
        return torch.cat([self._chunk_logprobs(requests[start : start + per_chunk], k)
                          for start in range(0, len(requests), per_chunk)], dim=1)

    def _chunk_logprobs(self, chunk: Sequence[ScoreRequest], k: int) -> torch.Tensor:
        """`_candidate_logprobs` of requests that fit one forward: every scored position of
        every slice gathered at once, then lm_head and the log-softmax on blocks of them."""
        width = max(r.n_tokens for r in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, r in enumerate(chunk):
            ids[i, : r.n_tokens] = torch.tensor(r.tokens)
            mask[i, : r.n_tokens] = 1
        ids, mask = ids.repeat(k, 1).to(self.device), mask.repeat(k, 1).to(self.device)
        hidden = self.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        candidates = [c for r in chunk for c in r.candidates]  # one tuple per scored position
        # Each scored position's sequence and place in it; each candidate's position and token id.
        seq, pos, cand_pos, cand_id = (torch.tensor(v, dtype=torch.long, device=self.device) for v in (
            [i for i, r in enumerate(chunk) for _ in r.positions],
            [p for r in chunk for p in r.positions],
            [j for j, c in enumerate(candidates) for _ in c],
            [t for c in candidates for t in c]))
        rows = hidden.unflatten(0, (k, len(chunk)))[:, seq, pos]  # (k, positions, hidden)
        # In float64, so that the reference adds no rounding of its own to the log-sum-exp over
        # the vocabulary; blocks of positions bound the memory of its (k, block, vocab) copies.
        block = max(1, _SOFTMAX_VALUES // (k * self.n_vocab))
        first = [0, *accumulate(len(c) for c in candidates)]  # position j's candidates start here
        parts = []
        for start in range(0, len(candidates), block):
            stop = min(start + block, len(candidates))
            logp = torch.log_softmax(self.model.lm_head(rows[:, start:stop]).double(), dim=-1)
            picked = slice(first[start], first[stop])
            parts.append(logp[:, cand_pos[picked] - start, cand_id[picked]])
        return torch.cat(parts, dim=1) if parts else rows.new_zeros((k, 0), dtype=torch.float64)

    def close(self) -> None:
        """Drop the model (torch frees it with the last reference)."""
        self.model = None

    def __enter__(self) -> TorchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
