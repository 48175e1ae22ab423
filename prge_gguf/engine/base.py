"""The narrow interface every engine (llama.cpp, torch) implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from prge_gguf.gguf_header import GGUFHeader
from prge_gguf.lora import LoraAdapter
from prge_gguf.scoring import ScoreRequest, TokenizedExample, Tokenizer

# Adapters applied together with their scales: W x + sum_j scale_j * (alpha/r) B_j A_j x.
AdapterSet = Sequence[tuple[LoraAdapter, float]]


class Engine(Tokenizer, Protocol):
    """Loads one base model; scores many sequences at a time under a set of adapters.

    Optional capabilities are declared, not probed: `backprop` says whether the engine also
    implements `FirstOrder.loss_gradient` (the first-order baseline)."""

    model_path: Path
    header: GGUFHeader  # the model file's metadata and tensor shapes
    n_ctx: int
    backprop: bool
    # Seconds spent so far in each part of scoring (decode, adapter, logits, ...); empty where
    # the engine does not split its time. A training step logs the differences.
    timings: Mapping[str, float]

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
