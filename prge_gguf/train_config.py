"""Every training setting with its default and its checks (`TrainConfig`): light enough for
`prge-gguf info` and `--help` to read without loading the training loop."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

from prge_gguf.errors import PrgeError
from prge_gguf.estimators import ESTIMATORS, refusal
from prge_gguf.settings import DEFAULT_LR, OPTIMIZERS, ZEROTH_ORDER
from prge_gguf.targets import DEFAULT_TARGETS

LOSSES = ("label", "vocab")
SCHEDULES = ("constant", "linear")


@dataclass
class TrainConfig:
    """Every training setting, with its default. The CLI overrides these; config.json records them."""

    steps: int = 500
    batch_size: int = 16  # q * batch = 16 is the paper's budget at q = 1 (the CLI takes 64 on a GPU)
    q: int = 1  # queries (random directions) per step
    eps: float = 5e-2  # above llama.cpp's numeric noise in the loss (docs/design.md, Dead ends)
    lr: float | None = None  # None: DEFAULT_LR of the optimizer
    lr_schedule: str = "linear"  # "linear" (decay to 0 at the last step) or "constant"
    weight_decay: float = 0.0
    loss: str = "label"  # "label": CE over the label words; "vocab": full-vocabulary token CE
    optimizer: str = "zo"  # one of OPTIMIZERS; "sgd", "adam" backprop (torch engine; the baseline)
    estimator: str = "prge"  # the zeroth-order optimizers' gradient estimate: one of ESTIMATORS
    train_a: bool = False  # first-order only: train A too (full LoRA), not only B (LoRA-FA)
    seed: int = 0  # seeds A's init, batch order and every z
    rank: int = 8
    alpha: float = 16.0
    # attn_q + attn_v (MeZO's pair): as accurate as all seven projections in the tuning sweeps
    # (docs/design.md, Defaults) with 1/6.75 of the trainable values, so P-RGE takes a larger lr and
    # llama.cpp's LoRA compute and adapter swaps shrink in a step.
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    num_layers: int = 0  # LoRA on the last num_layers blocks only (MLX-LM's --num-layers); 0 = all
    eval_every: int = 100  # steps between evaluations on `eval_size` held-out examples
    eval_size: int = 200  # 0 = the whole eval set
    checkpoint_every: int = 50  # steps between resumable checkpoints (0 = only at the end / on Ctrl-C)
    early_stop: int = 0  # stop after this many evaluations without a better held-out score (0 = never)

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = DEFAULT_LR.get(self.optimizer, 0.0)  # an unknown optimizer is refused below
        for f in fields(self):
            value = getattr(self, f.name)
            default = f.default if f.default is not MISSING else f.default_factory()
            expected = float if default is None else type(default)  # None: lr, resolved above
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
            elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise PrgeError(f"{f.name}: expected {expected.__name__}, got {value!r}")
        checks = [
            (self.steps >= 1, "--steps must be >= 1"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.q >= 1, "--q must be >= 1"),
            (self.eps > 0, "--eps must be > 0"),
            (self.lr >= 0, "--lr must be >= 0"),
            (self.lr_schedule in SCHEDULES, f"--lr-schedule must be one of {', '.join(SCHEDULES)}"),
            (self.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.estimator in ESTIMATORS, f"--estimator {self.estimator!r} is unknown: use one of "
             f"{', '.join(ESTIMATORS)} ('prge-gguf train --help' describes them)"),
            (self.estimator == "prge" or self.optimizer in ZEROTH_ORDER,
             f"--estimator {self.estimator} estimates the gradient from forward passes; --optimizer "
             f"{self.optimizer} backpropagates: use --optimizer {', '.join(ZEROTH_ORDER)}"),
            (not (why := refusal(self.estimator, self.rank)), why),
            (not (self.train_a and self.optimizer in ZEROTH_ORDER),
             "--train-a trains A by backprop: use --optimizer sgd or adam (P-RGE trains B only)"),
            (self.eval_every >= 0, "--eval-every must be >= 0"),
            (self.checkpoint_every >= 0, "--checkpoint-every must be >= 0"),
            (self.early_stop >= 0, "--early-stop must be >= 0"),
            (self.num_layers >= 0, "--num-layers must be >= 0 (0 = all)"),
        ]
        for ok, message in checks:
            if not ok:
                raise PrgeError(message)
