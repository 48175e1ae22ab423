"""Scoring engines: the only code that runs the model. See `base.Engine` for the interface."""

from prge_gguf.engine.base import Engine
from prge_gguf.scoring import ScoreRequest

__all__ = ["Engine", "ScoreRequest"]
