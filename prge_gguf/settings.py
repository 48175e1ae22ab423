"""The settings of a training job, resolved in one place: what the caller gave (command-line flags
or `finetune` arguments) over a `--config` file over a resumed run's saved machine settings over
the defaults; the optimizers' names and their default learning rates. Training defaults
themselves live in `train_config.TrainConfig`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from prge_gguf.errors import PrgeError

# The context of eval and generate, and the longest sequence allowed unless --max-seq-len or
# --n-ctx say otherwise.
MAX_N_CTX = 1024
# The most tokens train fits its decodes to. A decode attends over all its tokens (its sequences
# masked from one another), so a smaller one spends less on attention and more on passes over the
# weights. On this 2-core CPU, RTE at batch 16 stepped 4-11% faster at 320-768 tokens than at 1024
# (bench/decode_size_cpu.md); on an H100 at batch 64, 1536 or 2048 stepped 10-28% faster than the
# fits up to 4096 on RTE, CB, WiC and COPA, 1536 as fast as 2048 or faster
# (bench/sweeps/decode-size-h100.md).
CPU_MAX_N_CTX = 768
GPU_MAX_N_CTX = 1536
# On a GPU, P-RGE's defaults change: a step's decodes take about as long at 64 examples as at 16,
# and at 16 the estimate's noise is mostly the minibatch's (bench/grad_noise.md), so a larger
# batch is accuracy almost for free (bench/sweeps/batch-gpu.md: SST-2 validation 0.77 -> 0.82 in
# the same minutes).
GPU_ZO_BATCH = 64
# Contexts that score a step's perturbations at once on a GPU unless --parallel says otherwise:
# on an H200 (bench/gpu.md) 8 stepped fastest of 1 and 8 at q = 4 on the 135M, 1.1B and 7B
# shapes; q = 1 makes only its 2.
PARALLEL_GPU = 8
DEFAULT_TEMPLATE = "{text}"
TRAIN_KEYS = ("steps", "batch_size", "q", "eps", "lr", "lr_schedule", "weight_decay", "loss", "optimizer",
              "estimator", "train_a", "seed", "rank", "alpha", "targets", "num_layers", "eval_every",
              "eval_size", "checkpoint_every", "early_stop")
# Where a run's data and model come from: saved with it, and a resumed run keeps them.
SOURCE_KEYS = ("task", "data", "valid", "template", "label_words", "model", "n_ctx", "max_seq_len",
               "truncate", "engine", "adapter")
# Defaults of the non-training flags (training defaults live in TrainConfig), applied after --config.
DEFAULTS = {"n_gpu_layers": 0, "engine": "llama", "device": "cpu"}
# Where a run computes: saved with it, and a resumed run keeps them unless its command line says otherwise.
MACHINE_KEYS = ("threads", "n_gpu_layers", "device", "parallel", "routing")
FILE_KEYS = (*TRAIN_KEYS, *SOURCE_KEYS, "out", *MACHINE_KEYS)

# zo: P-RGE (SGD on its estimate); zo-momentum, zo-adam: P-RGE's estimate fed to heavy-ball
# momentum or AdamW. sgd, adam: the first-order baseline, by backprop (torch engine).
OPTIMIZERS = ("zo", "zo-momentum", "zo-adam", "sgd", "adam")
ZEROTH_ORDER = ("zo", "zo-momentum", "zo-adam")
# The learning rate when none is given. A P-RGE step follows one random direction scaled by a
# noisy estimate, SGD the exact gradient; Adam's steps are ~lr per coordinate whatever the
# gradient's scale, so it wants its own (LoRA fine-tuning's usual 1e-4..1e-3).
# zo: the winner of the tuning sweeps on attn_q + attn_v (docs/design.md, Defaults); zo-momentum the
# same step size (momentum 0.9 multiplies steps by ~10); zo-adam not tuned (it lagged at 1e-3).
DEFAULT_LR = {"zo": 2e-2, "zo-momentum": 2e-3, "zo-adam": 1e-3, "sgd": 5e-3, "adam": 1e-3}

# How far a P-RGE step should go depends on how strongly the model's loss reacts to its adapter.
# The defaults above were tuned on SmolLM2 (a llama); in the tuning sweeps Gemma 3 270M diverged
# at them and did best at 1/20 of the lr and eps 2e-2 (docs/design.md, Defaults). Other architectures
# take the defaults. (lr factor for the SGD-like optimizers, eps for all zeroth-order ones.)
ARCHITECTURE_ZO = {"gemma3": (0.05, 2e-2)}


def architecture_defaults(architecture: str, optimizer: str) -> dict[str, float]:
    """The lr and eps that replace the defaults for a zeroth-order `optimizer` on a model of
    `architecture` (GGUF general.architecture); {} where the defaults stand."""
    if architecture not in ARCHITECTURE_ZO or optimizer not in ZEROTH_ORDER:
        return {}
    lr_factor, eps = ARCHITECTURE_ZO[architecture]
    scaled = {"lr": DEFAULT_LR[optimizer] * lr_factor} if optimizer != "zo-adam" else {}
    return {**scaled, "eps": eps}


def default_parallel(n_gpu_layers: int, threads: int) -> int:
    """--parallel's default: PARALLEL_GPU with layers on a GPU; on the CPU a context for each 2
    threads and at least 2 (one with one thread), at most PARALLEL_GPU (a step uses min(K, 2q) of
    them and shares the threads out). On the H200 machine's 16 cores 8 contexts x 2 threads stepped
    fastest at q = 4 (1.85x one context of 16) and 2 x 8 at q = 1; on 2 cores two contexts of one
    thread stepped 1.17x faster than one of two (bench/speed.md, llama-2ctx)."""
    if n_gpu_layers != 0:
        return PARALLEL_GPU
    return min(PARALLEL_GPU, max(threads // 2, min(threads, 2)))


@dataclass
class Settings:
    """A training or evaluation job: where its data and model come from, where it computes and
    writes, and its training settings (None: TrainConfig's default, or the architecture's).
    `given` names what the caller set (flags, arguments or the config file), which a resumed run
    checks against its own."""

    # data
    task: str | None = None
    data: str | None = None
    valid: str | None = None
    template: str | None = None
    label_words: str | None = None
    # model and machine
    model: str | None = None
    engine: str | None = None
    device: str | None = None
    threads: int | None = None
    n_gpu_layers: int | None = None
    parallel: int | None = None
    routing: bool | None = None
    n_ctx: int | None = None
    max_seq_len: int | None = None
    truncate: bool | None = None
    # the run
    out: str | None = None
    force: bool = False
    config: str | None = None
    resume: str | None = None
    adapter: str | None = None
    distributed: bool = False
    limit: int | None = None  # evaluation: the first N examples only
    # training: TrainConfig's fields
    steps: int | None = None
    batch_size: int | None = None
    q: int | None = None
    eps: float | None = None
    lr: float | None = None
    lr_schedule: str | None = None
    weight_decay: float | None = None
    loss: str | None = None
    optimizer: str | None = None
    estimator: str | None = None
    train_a: bool | None = None
    seed: int | None = None
    rank: int | None = None
    alpha: float | None = None
    targets: list[str] | None = None
    num_layers: int | None = None
    eval_every: int | None = None
    eval_size: int | None = None
    checkpoint_every: int | None = None
    early_stop: int | None = None
    given: frozenset[str] = field(default_factory=frozenset)

    def training(self) -> dict[str, object]:
        """The training settings that are set, as TrainConfig's keyword arguments."""
        return {k: getattr(self, k) for k in TRAIN_KEYS if getattr(self, k) is not None}

    def on_gpu(self) -> bool:
        """Whether the engine computes on a GPU: llama.cpp with layers offloaded, torch off the CPU."""
        if self.engine == "torch":
            return self.device != "cpu"
        return self.n_gpu_layers != 0

    def decode_cap(self) -> int:
        """The most tokens a training decode takes when --n-ctx is not given, on this backend."""
        return GPU_MAX_N_CTX if self.on_gpu() else CPU_MAX_N_CTX


SETTINGS = tuple(f.name for f in fields(Settings) if f.name != "given")


def check_known(values: Mapping[str, object], known: Sequence[str]) -> None:
    """Refuse a setting that is none of `known`, naming the first."""
    if unknown := sorted(set(values) - set(known)):
        raise PrgeError(f"unknown setting '{unknown[0]}' (expected some of: {', '.join(known)})")


def resolve(values: Mapping[str, object]) -> Settings:
    """Settings from what the caller gave (None: not given), with the `config` file, a resumed
    run's machine settings and the defaults filling the rest, in that order of precedence."""
    check_known(values, SETTINGS)
    given = {k: v for k, v in values.items() if v is not None}
    if given.get("config"):
        from prge_gguf.config_file import load_config_file

        given = load_config_file(str(given["config"]), FILE_KEYS) | given
    chosen = frozenset(k for k, v in given.items() if v is not False)
    if given.get("resume"):
        from prge_gguf.run_dir import RunDir

        saved = RunDir.saved_machine(Path(str(given["resume"])))
        given = {k: v for k, v in saved.items() if k in MACHINE_KEYS and v is not None} | given
    return Settings(**(DEFAULTS | given), given=chosen)
