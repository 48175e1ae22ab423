"""What engines and data share: the score requests data makes and engines evaluate, the
tokenizer data needs from an engine, and the arithmetic from log-probs to an example's option
scores and loss. Engines and data both import this module, never each other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


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


@dataclass(frozen=True)
class TokenizedExample:
    """Score requests of one example; `owners[r][p][c]` is the option the candidate belongs to."""

    requests: tuple[ScoreRequest, ...]
    owners: tuple[tuple[tuple[int, ...], ...], ...]
    n_options: int
    label: int
    n_scored: int = 0  # > 0: a language-modelling example (mean NLL of n_scored tokens), not a choice
    place: str = ""  # "file:line", for errors

    @property
    def n_tokens(self) -> int:
        """Tokens decoded to score this example (all its sequences)."""
        return sum(r.n_tokens for r in self.requests)

    @property
    def longest(self) -> int:
        """Length of its longest sequence."""
        return max(r.n_tokens for r in self.requests)


class Tokenizer(Protocol):
    """What turning examples into score requests needs from an engine."""

    chat_template: str | None  # the model's tokenizer.chat_template, where it has one

    def tokenize(self, text: str, add_special: bool, parse_special: bool = False) -> list[int]:
        """Token ids of `text`; `add_special` adds BOS where the model wants it; `parse_special`
        reads control-token text (`<|im_start|>`) as the control tokens."""

    def special_tokens(self) -> dict[str, str]:
        """`bos_token` and `eos_token` texts, for chat templates."""


def option_scores(ex: TokenizedExample, results: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Summed log-prob of each option's tokens, from the engine's results for `ex.requests`."""
    scores = np.zeros(ex.n_options)
    for req_owners, req_results in zip(ex.owners, results, strict=True):
        for pos_owners, logprobs in zip(req_owners, req_results, strict=True):
            np.add.at(scores, list(pos_owners), logprobs)
    return scores


def example_loss(ex: TokenizedExample, scores: np.ndarray, kind: str) -> float:
    """Language modelling: mean token NLL. Choices: `label`, cross-entropy over the options;
    `vocab`, the true option's full-vocabulary NLL."""
    if ex.n_scored:
        return float(-scores[0] / ex.n_scored)
    label = ex.label
    if kind == "vocab":
        return float(-scores[label])
    peak = scores.max()
    return float(peak + np.log(np.exp(scores - peak).sum()) - scores[label])
