"""The training loop: batches, P-RGE steps through an engine, evaluation, metrics, adapter files."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np
from tqdm import tqdm

from prge_gguf.distributed import RankLost, Workers
from prge_gguf.engine.base import AdapterSet, Engine
from prge_gguf.errors import PrgeError
from prge_gguf.estimators import ESTIMATORS, own_state
from prge_gguf.estimators.base import Oracle
from prge_gguf.lora import LoraAdapter
from prge_gguf.optim import Optimizer, OptimizerState, make_optimizer
from prge_gguf.prge import PairLoss
from prge_gguf.run_dir import RunDir
from prge_gguf.scoring import TokenizedExample, example_loss, option_scores
from prge_gguf.settings import ZEROTH_ORDER
from prge_gguf.threads import thread_map
from prge_gguf.train_config import TrainConfig

EVAL_CHUNK = 64  # examples scored together in evaluation; the unit ranks share


def example_losses(
    engine: Engine, batch: Sequence[TokenizedExample], adapters: AdapterSet, loss: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example (loss, predicted option index, NaN for language modelling) under
    `adapters`, all examples scored in as few decodes as fit."""
    return losses_of(batch, engine.score([r for ex in batch for r in ex.requests], adapters), loss)


def losses_of(
    batch: Sequence[TokenizedExample], results: Sequence[Sequence[np.ndarray]], loss: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example (loss, predicted option) from the engine's results for all of `batch`'s requests."""
    losses, predicted, i = [], [], 0
    for ex in batch:
        scores = option_scores(ex, results[i : i + len(ex.requests)])
        i += len(ex.requests)
        losses.append(example_loss(ex, scores, loss))
        predicted.append(np.nan if ex.n_scored else float(np.argmax(scores)))
    return np.array(losses), np.array(predicted)


def evaluate(
    engine: Engine, examples: Sequence[TokenizedExample], adapter: LoraAdapter | None, loss: str,
    workers: Workers | None = None,
) -> dict:
    """Mean loss, accuracy and how often each option was predicted (None, [] without choice
    examples) over `examples`; the base model when `adapter` is None. With several `workers`,
    each scores its share of the chunks."""
    # Fixed chunks, dealt out whole: llama.cpp's logits depend on which sequences share a
    # decode, so the same chunking on any number of ranks gives the same numbers.
    workers = workers or Workers()
    chunks = [slice(i, i + EVAL_CHUNK) for i in range(0, len(examples), EVAL_CHUNK)]
    losses, predicted = np.zeros(len(examples)), np.zeros(len(examples))
    mine = workers.mine(len(chunks))
    with tqdm(total=sum(len(examples[chunks[k]]) for k in mine), desc="eval", unit="row", leave=False,
              dynamic_ncols=True, disable=not workers.is_main) as bar:
        for k in mine:
            losses[chunks[k]], predicted[chunks[k]] = example_losses(
                engine, examples[chunks[k]], [(adapter, 1.0)] if adapter else [], loss)
            bar.update(len(examples[chunks[k]]))
    losses, predicted = workers.combine(losses), workers.combine(predicted)
    choices = [(ex.label, int(p)) for ex, p in zip(examples, predicted, strict=True) if not np.isnan(p)]
    accuracy = float(np.mean([label == p for label, p in choices])) if choices else None
    # A classifier that says one class throughout shows here, not in its accuracy.
    width = max((ex.n_options for ex in examples if not ex.n_scored), default=0)
    counts = np.bincount(np.array([p for _, p in choices], dtype=int), minlength=width).tolist()
    return {"loss": float(losses.mean()), "accuracy": accuracy, "n": len(examples), "predicted": counts}


def pair_loss_fn(
    engine: Engine, adapter: LoraAdapter, batch: Sequence[TokenizedExample], cfg: TrainConfig,
    workers: Workers | None = None,
) -> PairLoss:
    """Losses at B +/- eps z_i for each scaled direction eps z_i, evaluated on `batch`; with
    several `workers`, each evaluates its share of the 2q perturbations and they combine."""
    requests = [r for ex in batch for r in ex.requests]
    workers = workers or Workers()

    def pair_loss(scaled: Sequence[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        # One adapter per sign: B +/- eps z, all 2q handed to the engine at once. (Stacking B
        # and eps z as two adapters at scales 1 and +/-1 would save llama.cpp files, but it
        # mis-applies two adapters on one weight: see docs/design.md, Dead ends.)
        signed = [(dz, sign) for dz in scaled for sign in (1, -1)]
        mine = workers.mine(len(signed))

        def perturb(k: int) -> LoraAdapter:
            dz, sign = signed[k]
            return adapter.with_b({n: adapter.b[n] + np.float32(sign) * dz[n] for n in adapter.names})

        # 2q copies of B one after another would grow a step's time with q when the engine
        # scores the perturbations in parallel.
        perturbed = thread_map(perturb, mine)
        means = np.zeros(len(signed))
        for k, results in zip(mine, engine.score_each(requests, perturbed), strict=True):
            means[k] = losses_of(batch, results, cfg.loss)[0].mean()
        means = workers.combine(means)
        return means[0::2], means[1::2]

    return pair_loss


def oracle_fn(
    engine: Engine, adapter: LoraAdapter, batch: Sequence[TokenizedExample], cfg: TrainConfig,
    workers: Workers | None = None,
) -> Oracle:
    """The losses an estimator may ask for on `batch`: pairs at B +/- offsets (shared among
    `workers`), and the loss at B itself (each rank scores it: one evaluation)."""
    return Oracle(pair_loss_fn(engine, adapter, batch, cfg, workers),
                  lambda: float(example_losses(engine, batch, [(adapter, 1.0)], cfg.loss)[0].mean()))


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of `step` (0-based) under the configured schedule."""
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - step / max(cfg.steps, 1))
    return cfg.lr


def batch_indices(n_examples: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Examples of batch `step`: epochs of seeded permutations, so any step is reproducible alone."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_examples)
        perm = np.random.default_rng([seed, 0xDA7A, epoch]).permutation(n_examples)
        out.extend(int(i) for i in perm[offset : offset + batch_size - len(out)])
    return out


class GracefulStop:
    """While training, the first Ctrl-C (SIGINT) or SIGTERM lets the current step finish; the loop
    then checkpoints and stops. A second Ctrl-C interrupts at once.

    Why not raise from the handler: it runs wherever Python regains control, which is often inside
    llama.cpp's log callback (adapters load every step), and an exception raised there is printed
    and dropped by ctypes: the run would go on as if never interrupted."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:  # a background job keeps ignoring it
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write("\nstopping after this step (Ctrl-C again to stop now)\n")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(
    engine: Engine,
    adapter: LoraAdapter,
    train_set: Sequence[TokenizedExample],
    eval_set: Sequence[TokenizedExample],
    cfg: TrainConfig,
    run: RunDir,
    on_eval: Callable[[int, dict], None] = lambda step, m: None,
    start_step: int = 0,
    workers: Workers | None = None,
    optimizer_state: OptimizerState | None = None,
) -> LoraAdapter:
    """Run steps `start_step`..`cfg.steps` from `adapter` (and `optimizer_state`: the optimizer's
    moments and the estimator's state); returns the trained adapter.

    Checkpoints every `cfg.checkpoint_every` steps and on Ctrl-C; a run resumed
    from a checkpoint ends bit-identical to an uninterrupted one. With several
    `workers` (ranks), all run this loop in step and end with the same adapter,
    checked by hash after every step.
    """
    workers = workers or Workers()
    # One state dict in the checkpoint: the estimator's keys ("<estimator>/...") and the optimizer's.
    est_state, saved = own_state(cfg.estimator, dict(optimizer_state or {}))
    optimizer = make_optimizer(cfg.optimizer, cfg.weight_decay)
    optimizer.load_state_dict(saved)
    state = optimizer.state_dict() | est_state  # as of the last whole step, for checkpoints
    eval_subset = eval_set[: cfg.eval_size] if cfg.eval_size else eval_set
    meta = {"prge.task_loss": cfg.loss}
    start = time.perf_counter()

    # Best-so-far and patience come from the evaluations already logged, so resume keeps them.
    scores = [_eval_score(r["eval_accuracy"], r["eval_loss"]) for r in run.eval_history()]
    best = max(scores, default=-np.inf)
    stale = len(scores) - 1 - scores.index(best) if scores else 0

    def run_eval(step: int) -> bool:
        """Evaluate, keep best.gguf; True when early stopping says stop."""
        nonlocal best, stale
        m = evaluate(engine, eval_subset, adapter, cfg.loss, workers)
        run.metrics({"step": step, "eval_loss": m["loss"], "eval_accuracy": m["accuracy"],
                     "eval_predicted": m["predicted"], "eval_n": m["n"], "wall": time.perf_counter() - start})
        on_eval(step, m)
        score = _eval_score(m["accuracy"], m["loss"])
        if score > best:
            best, stale = score, 0
            run.save_adapter(adapter, meta | {"prge.step": str(step)}, name="best.gguf")
        else:
            stale += 1
        return bool(cfg.early_stop) and stale >= cfg.early_stop

    bar = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
               disable=not workers.is_main)
    if cfg.eval_every and eval_subset and start_step == 0:
        run_eval(0)
    step = start_step
    try:
        with GracefulStop() as signalled:
            while step < cfg.steps:
                adapter, est_state, loss, tok_s = _step(engine, adapter, optimizer, est_state, train_set,
                                                        cfg, run, step, start, workers)
                state = optimizer.state_dict() | est_state
                step += 1
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:.0f}")
                bar.update()
                if cfg.eval_every and eval_subset and step % cfg.eval_every == 0:
                    stop = run_eval(step)
                    run.save_adapter(adapter, meta)
                    if stop:
                        bar.write(f"early stop at step {step}: no better held-out score in "
                                  f"{cfg.early_stop} evaluations")
                        break
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    run.save_checkpoint(adapter, step, state)
                if signalled.requested:
                    raise KeyboardInterrupt
    except (KeyboardInterrupt, RankLost):
        run.save_checkpoint(adapter, step, state)  # the state of a whole step: no collective needed
        if run.writable:
            bar.write(f"stopped at step {step}: checkpoint saved; continue with "
                      f"'prge-gguf train --resume {run.path}'")
        raise
    finally:
        bar.close()
    run.save_checkpoint(adapter, step, state)
    run.save_adapter(adapter, meta)
    return adapter


def _eval_score(accuracy: float | None, loss: float) -> float:
    """Higher is better: accuracy where there is one, else minus the loss."""
    return accuracy if accuracy is not None else -loss


def _step(engine: Engine, adapter: LoraAdapter, optimizer: Optimizer, est_state: OptimizerState,
          train_set: Sequence[TokenizedExample], cfg: TrainConfig, run: RunDir, step: int, start: float,
          workers: Workers) -> tuple[LoraAdapter, OptimizerState, float, float]:
    """One step (0-based `step`) with `optimizer` (updated in place) and the estimator's state
    `est_state`, logged; returns (updated adapter, the estimator's new state, loss, tokens/s)."""
    t0 = time.perf_counter()
    sent, comm_s = workers.bytes_sent, workers.comm_s
    # Where the llama engine's step time goes (decode, adapter swaps, log-softmax): the rest of
    # step_s is Python's. Logged per step, so any run shows its machine's split.
    timings = engine.timings
    timed = dict(timings)
    batch = [train_set[i] for i in batch_indices(len(train_set), cfg.batch_size, cfg.seed, step)]
    lr = lr_at(cfg, step)
    if cfg.optimizer in ZEROTH_ORDER:
        oracle = oracle_fn(engine, adapter, batch, cfg, workers)
        est = ESTIMATORS[cfg.estimator][1](adapter.b, oracle, est_state, seed=cfg.seed, step=step, q=cfg.q,
                                           eps=cfg.eps)
        new = adapter.with_b(optimizer.step(adapter.b, est.gradient, t=step + 1, lr=lr))
        est_state, passes = est.state, est.evaluations
        loss = float((est.loss_plus.mean() + est.loss_minus.mean()) / 2)
    else:
        new, loss = _first_order(engine, adapter, optimizer, batch, cfg, lr, step)
        passes = 1
    if not np.isfinite(loss):
        raise PrgeError(f"step {step + 1}: loss is {loss}; lower --lr or --eps in a new run "
                        f"(the run folder keeps its checkpoint of step {run.checkpoint_step})")
    # Logged, so runs on any number of ranks compare; B alone unless A is trained too.
    sha = workers.check_same(new.trainable(True) if cfg.train_a else new.b, step + 1)
    dt = time.perf_counter() - t0
    tokens = passes * sum(ex.n_tokens for ex in batch)
    row = {"step": step + 1, "loss": loss, "lr": lr, "tokens": tokens, "tok_s": tokens / dt,
           "step_s": dt, "wall": time.perf_counter() - start, "adapter_sha256": sha}
    row |= {f"{part}_s": timings[part] - timed.get(part, 0.0) for part in sorted(timings)}
    if workers.size > 1:
        row |= {"ranks": workers.size, "comm_bytes": workers.bytes_sent - sent,
                "comm_s": workers.comm_s - comm_s}
    run.metrics(row)
    return new, est_state, loss, tokens / dt


def _first_order(engine: Engine, adapter: LoraAdapter, optimizer: Optimizer,
                 batch: Sequence[TokenizedExample], cfg: TrainConfig, lr: float,
                 step: int) -> tuple[LoraAdapter, float]:
    """The baseline's step: the exact gradient by backprop (torch engine), then `optimizer`'s
    update (SGD or Adam). Returns (updated adapter, loss)."""
    loss, grads = engine.loss_gradient(batch, adapter, cfg.loss, train_a=cfg.train_a)
    new = optimizer.step(adapter.trainable(cfg.train_a), grads, t=step + 1, lr=lr)
    return adapter.with_tensors(new), loss


def config_record(cfg: TrainConfig, **extra: object) -> dict:
    """The resolved config as saved in config.json."""
    return {"train": asdict(cfg), **extra}
