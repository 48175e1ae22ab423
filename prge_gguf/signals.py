"""Holding Ctrl-C back while a few steps must finish together."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def sigint_held() -> Iterator[None]:
    """Defer SIGINT until the block ends, then act on it as the handler before would have
    (KeyboardInterrupt, as a rule). Only the main thread, where Python runs signal handlers,
    can hold it.

    Why not mask the signal (pthread_sigmask): that masks it in the calling thread only, and
    the kernel hands a process's signal to any thread that does not mask it (numpy's BLAS,
    llama.cpp's workers); Python then raises it in the main thread all the same."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[FrameType | None] = []
    previous = signal.signal(signal.SIGINT, lambda _signum, frame: came.append(frame))
    try:
        yield
    finally:
        # None: a handler set outside Python, which cannot be put back (the default then)
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
        if came and callable(previous):
            previous(signal.SIGINT, came[-1])
        elif came and previous in (signal.SIG_DFL, None):
            signal.raise_signal(signal.SIGINT)
