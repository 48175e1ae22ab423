"""`prge-gguf plot RUN_DIR`: training curves from metrics.jsonl as one PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from prge_gguf.errors import PrgeError


def _read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise PrgeError(f"{run_dir}: no metrics.jsonl (expected a run folder written by 'prge-gguf train')")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PrgeError(f"{path}:{i}: malformed JSON ({exc.msg})") from None
    return rows


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    # ZO step losses are noisy (one minibatch, one direction): show a trailing mean beside them.
    if len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write training loss and held-out metrics against step and wall time; returns the PNG path."""
    run_dir = Path(run_dir)
    rows = _read_metrics(run_dir)
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    if not steps and not evals:
        raise PrgeError(f"{run_dir / 'metrics.jsonl'}: no training steps or evaluations logged yet")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PrgeError("plotting needs matplotlib: pip install 'prge-gguf[plot]'") from None

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for col, xkey, xlabel in ((0, "step", "step"), (1, "wall", "wall time (s)")):
        ax = axes[0, col]
        if steps:
            x = np.array([r[xkey] for r in steps], dtype=float)
            y = np.array([r["loss"] for r in steps], dtype=float)
            ax.plot(x, y, color="0.75", linewidth=0.8, label="step loss")
            ax.plot(x, _smooth(y, 20), color="C0", label="mean of 20 steps")
            ax.legend()
        ax.set(xlabel=xlabel, ylabel="training loss", title=f"training loss vs {xlabel}")
        ax = axes[1, col]
        if evals:
            scored = [r for r in evals if r["eval_accuracy"] is not None]
            ax.plot([r[xkey] for r in scored], [r["eval_accuracy"] for r in scored], "o-", color="C1",
                    label="accuracy")
            ax2 = ax.twinx()
            ax2.plot([r[xkey] for r in evals], [r["eval_loss"] for r in evals], "s--", color="C2",
                     label="loss")
            ax2.set_ylabel("held-out loss")
        ax.set(xlabel=xlabel, ylabel="held-out accuracy", title=f"held-out metrics vs {xlabel}")
    fig.suptitle(str(run_dir))
    out = Path(out) if out else run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
