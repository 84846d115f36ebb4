"""Thread-parallel loops of our own (gzip compression, body-mask labelling): how many threads, and runs.

numpy, zlib and scipy.ndimage release the GIL in their inner loops, so plain threads give real
parallelism on large volumes without copying arrays into other processes. The thread count is the
CPUs this process may use (at most 16), or what ``medcyclegan --threads N`` set.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_MAX_THREADS = 16
_threads: int | None = None


def set_worker_threads(threads: int | None) -> None:
    """Sets the thread count of our parallel loops (``None``: back to the default)."""
    global _threads
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    _threads = threads


def worker_threads() -> int:
    """Threads for our parallel loops: as set, else the CPUs this process may run on (at most 16)."""
    if _threads is not None:
        return _threads
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(_MAX_THREADS, available))


def runs(length: int, min_run: int, threads: int | None = None) -> list[tuple[int, int]]:
    """``[start, stop)`` runs splitting ``range(length)`` into at most ``threads`` runs of >= ``min_run``.

    Example:
        >>> runs(10, 3, threads=4)
        [(0, 3), (3, 6), (6, 10)]
    """
    threads = worker_threads() if threads is None else threads
    parts = max(1, min(threads, length // max(1, min_run)))
    bounds = [length * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


def map_threads(function: Callable[[int], T], count: int, threads: int | None = None) -> list[T]:
    """``[function(0), ..., function(count - 1)]``, run on up to ``threads`` threads (in order)."""
    threads = worker_threads() if threads is None else threads
    if count <= 1 or threads <= 1:
        return [function(i) for i in range(count)]
    with ThreadPoolExecutor(max_workers=min(threads, count), thread_name_prefix="medcyclegan") as pool:
        return list(pool.map(function, range(count)))
