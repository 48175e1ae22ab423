"""`prge-gguf plot` writes a PNG of the run's curves."""

import json

import numpy as np

from prge_gguf.cli import main


def test_plot_writes_png_of_the_curves(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = [{"step": 0, "eval_loss": 0.9, "eval_accuracy": 0.5, "eval_n": 200, "wall": 10.0}]
    for s in range(1, 101):
        rows.append({"step": s, "loss": 0.9 - 0.003 * s + 0.1 * rng.standard_normal(), "lr": 5e-3,
                     "tokens": 400, "tok_s": 200.0, "step_s": 2.0, "wall": 10.0 + 2 * s})
        if s % 25 == 0:
            rows.append({"step": s, "eval_loss": 0.9 - 0.003 * s, "eval_accuracy": 0.5 + 0.002 * s,
                         "eval_n": 200, "wall": 12.0 + 2 * s})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(tmp_path)]) == 0
    png = tmp_path / "curves.png"
    assert capsys.readouterr().out.strip() == f"wrote {png}"
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[:2] == (700, 1100)
    # Not a blank canvas: lines in several colours are drawn.
    assert img[..., :3].std() > 0.05
    assert len(np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50


def test_plot_of_a_folder_without_metrics(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path}: no metrics.jsonl (expected a run folder written by 'prge-gguf train')")
