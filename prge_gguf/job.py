"""The training job: checks everything that can fail on input, then starts or resumes the run
folder and trains. `prge-gguf train` and `prge_gguf.finetune` both run it."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from prge_gguf import __version__
from prge_gguf.distributed import Workers
from prge_gguf.errors import PrgeError
from prge_gguf.gguf_header import GGUFHeader
from prge_gguf.inputs import check_base, datasets, describe, open_engine, read_adapter, tokenize_all
from prge_gguf.lora import LoraAdapter
from prge_gguf.models import model_path
from prge_gguf.settings import (
    GPU_ZO_BATCH,
    MACHINE_KEYS,
    SOURCE_KEYS,
    TRAIN_KEYS,
    ZEROTH_ORDER,
    Settings,
    architecture_defaults,
)

if TYPE_CHECKING:  # the run folder's module loads with the job, not with the CLI
    from prge_gguf.run_dir import RunDir


def _start_adapter(path: str, header: GGUFHeader, overrides: dict) -> LoraAdapter:
    """The adapter `train --adapter` starts from; its shape settings are its own, not flags'."""
    shape_flags = ("rank", "alpha", "targets", "num_layers")
    if given := [f"--{f.replace('_', '-')}" for f in shape_flags if f in overrides]:
        raise PrgeError(f"--adapter {path} sets the rank, alpha, targets and blocks: drop {', '.join(given)}")
    return read_adapter(path, header)


# What a resumed run keeps from its start; --steps may change (it extends the run), and where it
# computes (MACHINE_KEYS) may too.
_RUN_KEYS = (*(f for f in TRAIN_KEYS if f != "steps"), *SOURCE_KEYS)
# Source settings that name files: a run saves them absolute, so that it resumes from any folder.
_PATH_KEYS = ("data", "valid", "adapter")


def _absolute(key: str, value: object) -> object:
    """`value` of setting `key`, a path made absolute where the setting names a file."""
    return str(Path(str(value)).resolve()) if key in _PATH_KEYS and value else value


def _check_resume_flags(s: Settings, saved: dict) -> None:
    """Refuse a setting given with --resume that differs from the run's saved one, naming it."""
    from prge_gguf.train_config import TrainConfig

    if s.out:
        raise PrgeError("--resume continues the run in its own folder: drop --out")
    for key in _RUN_KEYS:
        if key not in s.given:
            continue
        section = saved.get("train" if key in TRAIN_KEYS else "source", {})
        # A key an older run did not record had its default then.
        given, kept = getattr(s, key), section.get(key, getattr(TrainConfig, key, None))
        if key == "model":
            given, kept = str(model_path(given)), str(kept)
        given, kept = _absolute(key, given), _absolute(key, kept)
        if given != kept:
            flag = "--" + key.replace("_", "-")
            raise PrgeError(f"{flag}: a resumed run keeps its saved setting ({kept!r}); drop {flag}, "
                            "or start a new run with --out")


def _save_peft(run: RunDir, adapter: LoraAdapter, header: GGUFHeader) -> Path:
    """The run's PEFT copy of `adapter`, `peft/`, for the model of `header`."""
    from converters.peft import to_peft_for

    return run.save_peft(lambda tmp: to_peft_for(adapter, tmp, header))


def run_training(s: Settings, on_metrics: Callable[[dict], None] | None = None) -> Path:
    """Train as `s` says: a new run in `s.out`, or `s.resume` one; returns the run folder. Each
    row the run logs (a step's loss, an evaluation) also goes to `on_metrics`."""
    workers = Workers.join() if s.distributed else Workers()
    try:
        return _train_as(workers, s, on_metrics)
    finally:
        workers.close()


def _train_as(workers: Workers, s: Settings, on_metrics: Callable[[dict], None] | None = None) -> Path:
    """Training on one rank (of one, or of a distributed job); rank 0 writes the run."""
    from prge_gguf.data import decode_size
    from prge_gguf.gguf_header import read_header
    from prge_gguf.hf_names import peft_unnamed
    from prge_gguf.lora import check_rank, default_targets, init_lora_fa, num_layers_of, untargeted
    from prge_gguf.memory import check_fits, train_bytes
    from prge_gguf.outputs import check_run_folder
    from prge_gguf.run_dir import RunDir
    from prge_gguf.train import config_record, evaluate, train
    from prge_gguf.train_config import TrainConfig

    say = print if workers.is_main else lambda *a, **k: None
    if s.resume:
        if s.adapter:
            raise PrgeError("--resume continues a run from its checkpoint; --adapter starts a new one: "
                            "drop one of them")
        _check_resume_flags(s, RunDir.saved_config(Path(s.resume)))  # before the folder is touched
        run, saved, start_step, adapter, optimizer_state = RunDir.open_resume(
            Path(s.resume), writable=workers.is_main)
        if "steps" in s.given and s.steps < start_step:
            raise PrgeError(f"--steps {s.steps}: the run's checkpoint is at step {start_step} already")
        if "steps" in s.given and s.steps != saved["train"]["steps"]:
            saved["train"]["steps"] = s.steps
            run.rewrite_config(saved)
        cfg = TrainConfig(**saved["train"])
        s = dataclasses.replace(s, **saved["source"])
    else:
        if not s.out:
            raise PrgeError("train needs --out RUN_DIR (or --resume RUN_DIR)")
        # Fail before the model loads.
        check_run_folder(s.out, force=s.force,
                         inputs=(s.adapter, s.data, s.valid, s.config))
        overrides = s.training()
        header = read_header(model_path(s.model))
        optimizer = overrides.get("optimizer", TrainConfig.optimizer)
        tuned = architecture_defaults(header.architecture, optimizer) | {"targets": default_targets(header)}
        if s.on_gpu() and optimizer in ZEROTH_ORDER:
            tuned["batch_size"] = GPU_ZO_BATCH
        adapter = _start_adapter(s.adapter, header, overrides) if s.adapter else None
        if adapter is not None:
            overrides |= {"rank": adapter.rank, "alpha": adapter.alpha, "targets": adapter.targets,
                          "num_layers": num_layers_of(adapter, header)}
        cfg, run, start_step, optimizer_state = TrainConfig(**tuned | overrides), None, 0, {}
        shapes = check_rank(header, cfg.targets, cfg.rank, cfg.num_layers)
        check_fits(train_bytes(header, shapes, cfg.rank, cfg.q, s.n_ctx or s.decode_cap()))
    if workers.size > 1 and cfg.optimizer not in ZEROTH_ORDER:
        raise PrgeError("--distributed shares P-RGE's loss values: use --optimizer "
                        + " or ".join(ZEROTH_ORDER))
    if workers.size > 2 * cfg.q:
        say(f"warning: {workers.size} ranks share {2 * cfg.q} perturbations a step; ranks "
            f"{2 * cfg.q}..{workers.size - 1} only evaluate (raise --q to use them)", file=sys.stderr)
    train_ex, eval_ex = datasets(s)
    if cfg.batch_size > len(train_ex):
        raise PrgeError(f"--batch-size {cfg.batch_size} is more than the {len(train_ex)} training examples: "
                        f"lower it (at most {len(train_ex)})")
    with open_engine(s) as engine:
        # Everything that can fail on input happens before the run folder is made.
        if cfg.optimizer not in ZEROTH_ORDER and not engine.backprop:
            raise PrgeError(f"--optimizer {cfg.optimizer} needs backpropagation: use --engine torch")
        if adapter is None:
            adapter = init_lora_fa(engine.header, cfg.targets, cfg.rank, cfg.alpha, cfg.seed, cfg.num_layers)
        elif s.resume:
            check_base(adapter, engine.header, s.resume)
        if others := untargeted(engine.header):
            say(f"note: the adapter covers {', '.join(adapter.targets)}; not {', '.join(others)}",
                file=sys.stderr)
        if unnamed := peft_unnamed(adapter):
            more = f" (and {len(unnamed) - 1} more)" if len(unnamed) > 1 else ""
            say(f"warning: no PEFT module for {unnamed[0]}{more}: this run writes adapter.gguf only, "
                "no peft/ folder ('prge-gguf export' cannot convert it either)", file=sys.stderr)
        train_tok = tokenize_all(engine, train_ex, s)
        eval_tok = tokenize_all(engine, eval_ex, s)
        if not s.n_ctx:  # before the first decode: the KV cache is sized by it
            engine.set_context(decode_size(train_tok, eval_tok, cfg.batch_size, s.decode_cap()))
        if s.adapter and not s.resume:
            # The engine checks an adapter fully only when it first applies it (llama.cpp, e.g., takes
            # token_embd in another layout): one example now, so that a refusal leaves no run folder.
            engine.score(train_tok[0].requests, [(adapter, 1.0)])
        if run is None:
            source = {k: _absolute(k, getattr(s, k)) for k in SOURCE_KEYS} | {"model": str(engine.model_path)}
            record = config_record(cfg, source=source, base_fingerprint=adapter.fingerprint,
                                   machine={k: getattr(s, k) for k in MACHINE_KEYS}, version=__version__)
            run = RunDir.open_new(Path(s.out), record, adapter) if workers.is_main \
                else RunDir(Path(s.out), writable=False)
        run.on_row = on_metrics
        if not eval_tok:
            say("note: no held-out data (--valid): no evaluation during training, and no best.gguf",
                file=sys.stderr)
        t0 = time.perf_counter()

        def on_eval(step: int, m: dict) -> None:
            from tqdm import tqdm

            if workers.is_main:
                tqdm.write(f"step {step}: eval {describe(m)}")

        try:
            adapter = train(engine, adapter, train_tok, eval_tok, cfg, run, on_eval, start_step, workers,
                            optimizer_state)
            train_s = time.perf_counter() - t0
            if eval_tok:
                final = evaluate(engine, eval_tok, adapter, cfg.loss, workers)
                run.metrics({"step": cfg.steps, "final_eval_loss": final["loss"],
                             "final_eval_accuracy": final["accuracy"], "eval_n": final["n"],
                             "train_s": train_s})
                say(f"final: eval {describe(final)}; training took {train_s:.0f} s")
            peft = None if unnamed else _save_peft(run, adapter, engine.header)
        finally:
            run.close()
    also = f" and {peft} (PEFT)" if peft else ""
    say(f"adapter written to {run.path / 'adapter.gguf'} (llama.cpp){also}")
    return run.path
