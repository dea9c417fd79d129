"""Spreading per-file work over the CPU cores, with a progress bar."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

In = TypeVar("In")
Out = TypeVar("Out")


def cpu_workers(requested: int = 0) -> int:
    return requested if requested > 0 else (len(os.sched_getaffinity(0)) or 1)


def parallel_map(
    function: Callable[[In], Out], items: Iterable[In], *, total: int, workers: int = 0, desc: str = ""
) -> Iterator[Out]:
    """map(function, items) over `workers` processes (in order), with a progress bar on stderr."""
    workers = cpu_workers(workers)
    chunksize = max(1, min(256, total // (workers * 8) or 1))
    if workers == 1 or total < 64:
        yield from tqdm(map(function, items), total=total, desc=desc, mininterval=1.0)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from tqdm(pool.map(function, items, chunksize=chunksize), total=total, desc=desc, mininterval=1.0)
