"""AdamW and heavy-ball momentum over named float32 tensors, for exact gradients (the
first-order baseline) and P-RGE's estimates alike. Pure numpy.

AdamW (Loshchilov & Hutter: Adam with decoupled weight decay), step for step
as `torch.optim.AdamW`, for the t-th update (t = 1, 2, ...) of a tensor p with
gradient g:

    p <- p (1 - lr wd)
    m <- b1 m + (1 - b1) g          v <- b2 v + (1 - b2) g^2
    p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

Momentum (as `torch.optim.SGD(momentum=0.9)`): m <- b1 m + g, p <- p - lr (m + wd p)
with the decay folded into g first; for P-RGE it averages the estimates of past steps
(ZO-SGD-MMT in the ZO benchmark of Zhang et al., 2024).

Each optimizer is an object that holds its state and updates with it (`step`); the state is
m (and for Adam v) of every tensor, one flat dict (`m/<name>`, `v/<name>`) that checkpoints
save as `state_dict()` gives it; t is the training step, so it is not stored. An empty state
is the start (m = v = 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from prge_gguf.prge import descend

BETAS = (0.9, 0.999)  # Kingma & Ba's defaults, as torch, PEFT and TRL use them
EPS = 1e-8


OptimizerState = dict[str, np.ndarray]


class Optimizer:
    """An update rule and its state; `step` applies one update and moves the state with it."""

    def __init__(self, weight_decay: float = 0.0) -> None:
        self.weight_decay = weight_decay
        self._state: OptimizerState = {}

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], *, t: int,
             lr: float) -> dict[str, np.ndarray]:
        """The t-th update (t >= 1) of `params` along `grads` (exact or estimated): new params."""
        raise NotImplementedError

    def state_dict(self) -> OptimizerState:
        """The state as checkpoints save it: flat, `m/<name>` (and `v/<name>`) per tensor."""
        return dict(self._state)

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Take up a state that `state_dict` gave (a checkpoint's)."""
        self._state = dict(state)


class Sgd(Optimizer):
    """Plain descent, p <- p - lr (g + wd p): P-RGE's own update (`zo`) and first-order SGD.
    Its state stays empty."""

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], *, t: int,
             lr: float) -> dict[str, np.ndarray]:
        """p - lr (g + wd p), in float32."""
        return descend(params, grads, lr, self.weight_decay)


class AdamW(Optimizer):
    """AdamW, step for step as `torch.optim.AdamW` (module docstring)."""

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], *, t: int,
             lr: float) -> dict[str, np.ndarray]:
        """The t-th AdamW update (t >= 1) of `params` with `grads`; the moments move with it."""
        b1, b2 = BETAS
        # Bias corrections in float64, as torch computes them, then applied in float32.
        step_size = np.float32(lr / (1 - b1**t))
        root_correction = np.float32(math.sqrt(1 - b2**t))
        new, moments = {}, {}
        for name, p in params.items():
            g = np.asarray(grads[name], np.float32)
            m = self._state.get(f"m/{name}", np.zeros_like(p))
            v = self._state.get(f"v/{name}", np.zeros_like(p))
            m = m + np.float32(1 - b1) * (g - m)
            v = np.float32(b2) * v + np.float32(1 - b2) * g * g
            decayed = p * np.float32(1 - lr * self.weight_decay)
            new[name] = decayed - step_size * m / (np.sqrt(v) / root_correction + np.float32(EPS))
            moments[f"m/{name}"], moments[f"v/{name}"] = m, v
        self._state = moments
        return new


class Momentum(Optimizer):
    """Heavy-ball momentum BETAS[0], as `torch.optim.SGD(momentum=0.9)` (module docstring)."""

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], *, t: int,
             lr: float) -> dict[str, np.ndarray]:
        """One momentum update of `params` with `grads` (t is not needed); the moment moves with it."""
        new, moments = {}, {}
        for name, p in params.items():
            g = np.asarray(grads[name], np.float32) + np.float32(self.weight_decay) * p
            m = np.float32(BETAS[0]) * self._state.get(f"m/{name}", np.zeros_like(p)) + g
            new[name], moments[f"m/{name}"] = p - np.float32(lr) * m, m
        self._state = moments
        return new


def make_optimizer(name: str, weight_decay: float = 0.0) -> Optimizer:
    """The optimizer of `--optimizer name` (OPTIMIZERS), fresh: AdamW for `adam` and `zo-adam`,
    Momentum for `zo-momentum`, Sgd for `zo` and `sgd`."""
    if name.endswith("adam"):
        return AdamW(weight_decay)
    if name.endswith("momentum"):
        return Momentum(weight_decay)
    return Sgd(weight_decay)
