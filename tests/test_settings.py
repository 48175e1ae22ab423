"""One precedence for a job's settings: given > --config file > the resumed run's saved machine
settings > defaults."""

import json

import pytest

from prge_gguf.errors import PrgeError
from prge_gguf.settings import resolve


def test_given_beats_config_beats_saved_run_beats_defaults(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("lr: 0.5\nthreads: 3\nsteps: 7\n")
    run = tmp_path / "run"
    run.mkdir()
    # An older run recorded n_gpu_layers as null: the default fills it, not the null.
    (run / "config.json").write_text(json.dumps(
        {"machine": {"threads": 5, "device": "cuda", "n_gpu_layers": None, "parallel": 4}}))
    s = resolve({"config": str(config), "resume": str(run), "lr": 0.25, "q": None})
    assert (s.lr, s.steps) == (0.25, 7)  # given, then the file
    assert (s.threads, s.device, s.parallel) == (3, "cuda", 4)  # the file, then the saved run
    assert (s.n_gpu_layers, s.engine) == (0, "llama")  # defaults
    assert s.q is None  # unset: TrainConfig's default applies
    assert s.given == {"config", "resume", "lr", "threads", "steps"}
    assert s.training() == {"lr": 0.25, "steps": 7}


def test_an_unknown_setting_is_named():
    with pytest.raises(PrgeError, match=r"^unknown setting 'learning_rate' \(expected some of: task, "):
        resolve({"learning_rate": 1e-3})
