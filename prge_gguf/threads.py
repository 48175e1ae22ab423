"""Mapping a function over items on threads, for numpy work that releases the GIL."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """[fn(x) for x in items], in order, on as many threads as items (up to the cores); one item
    runs on the calling thread. Numpy's generators and large array operations release the GIL,
    so a step's per-query work (drawing z, building B +/- eps z) runs side by side."""
    items = list(items)
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(len(items), os.cpu_count() or 1), thread_name_prefix="prge") as pool:
        return list(pool.map(fn, items))
