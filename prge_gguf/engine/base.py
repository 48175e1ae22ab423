"""The narrow interface every engine (llama.cpp, torch) implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from prge_gguf.gguf_header import GGUFHeader
from prge_gguf.lora import LoraAdapter

if TYPE_CHECKING:  # data.py builds on ScoreRequest below
    from prge_gguf.data import TokenizedExample

# Adapters applied together with their scales: W x + sum_j scale_j * (alpha/r) B_j A_j x.
AdapterSet = Sequence[tuple[LoraAdapter, float]]


@dataclass(frozen=True)
class ScoreRequest:
    """One sequence to evaluate.

    The logits at `positions[k]` (which predict token positions[k] + 1) are
    log-softmaxed over the full vocabulary and read at the token ids
    `candidates[k]`.
    """

    tokens: tuple[int, ...]
    positions: tuple[int, ...]
    candidates: tuple[tuple[int, ...], ...]

    @property
    def n_tokens(self) -> int:
        """Length of the sequence."""
        return len(self.tokens)


class Engine(Protocol):
    """Loads one base model; scores many sequences at a time under a set of adapters.

    Optional capabilities are declared, not probed: `backprop` says whether the engine also
    implements `FirstOrder.loss_gradient` (the first-order baseline)."""

    model_path: Path
    header: GGUFHeader  # the model file's metadata and tensor shapes
    n_ctx: int
    chat_template: str | None
    backprop: bool
    # Seconds spent so far in each part of scoring (decode, adapter, logits, ...); empty where
    # the engine does not split its time. A training step logs the differences.
    timings: Mapping[str, float]

    def tokenize(self, text: str, add_special: bool, parse_special: bool = False) -> list[int]:
        """Token ids of `text`; `add_special` adds BOS where the model wants it; `parse_special`
        reads control-token text (`<|im_start|>`) as the control tokens."""

    def special_tokens(self) -> dict[str, str]:
        """`bos_token` and `eos_token` texts, for chat templates."""

    def set_context(self, n_ctx: int) -> None:
        """Score at most `n_ctx` tokens per decode from now on: the longest sequence, and the
        most tokens packed together (llama.cpp sizes its KV cache and buffers by it)."""

    def score(
        self, requests: Sequence[ScoreRequest], adapters: AdapterSet
    ) -> list[list[np.ndarray]]:
        """Per request, per scored position: log-probs (full-vocabulary softmax) of its candidates.

        An empty `adapters` scores the base model.
        """

    def score_each(
        self, requests: Sequence[ScoreRequest], adapters: Sequence[LoraAdapter]
    ) -> list[list[list[np.ndarray]]]:
        """`score(requests, [(a, 1.0)])` for each adapter `a`: the 2q perturbed adapters of a
        P-RGE step. An engine may evaluate them together (the paper's outer/inner-loop
        parallelism) or in turn."""

    def close(self) -> None:
        """Free the model and everything built on it."""


class FirstOrder(Engine, Protocol):
    """An engine that backpropagates (`backprop` True): the first-order baseline's gradient."""

    def loss_gradient(self, batch: Sequence[TokenizedExample], adapter: LoraAdapter, loss: str,
                      train_a: bool = False) -> tuple[float, dict[str, np.ndarray]]:
        """(mean loss over `batch`, its exact gradient by tensor: `<name>.lora_b`, and with
        `train_a` also `<name>.lora_a`)."""
