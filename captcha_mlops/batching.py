"""Adaptive batching inside the serving process: images of concurrent requests are read in one model call.

No wait window: a request that finds the model idle is read at once, alone, so a lone client pays nothing for
batching. While the model reads a batch, new requests queue; the moment it is done it takes everything queued
(up to `max_batch_size`) as the next batch. Batches grow with the load by themselves, and the model never idles
while requests wait.

The model runs on a thread of its own that takes its next batch itself: it never waits for the event loop, which
under load is busy receiving requests (handed to an executor and back, each batch left the model idle until the
loop got round to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import numpy as np

Result = TypeVar("Result")


class Overloaded(RuntimeError):
    """A request waited in the queue longer than the batcher's deadline."""


@dataclasses.dataclass
class _Job(Generic[Result]):
    pixels: np.ndarray
    queued_at: float
    future: asyncio.Future[tuple[Result, int]]
    loop: asyncio.AbstractEventLoop


class Batcher(Generic[Result]):
    """Queues single model inputs from async code and reads them in batches with `read_batch` on a thread.

    A request still queued after `queue_deadline_s` fails with Overloaded (the service answers 503) instead
    of making the queue longer for everyone after it. Batchers given the same
    `model_lock` never run their models at the same time (several models, one set of cores).
    """

    def __init__(
        self,
        read_batch: Callable[[np.ndarray], Sequence[Result]],
        max_batch_size: int,
        queue_deadline_s: float,
        on_batch: Callable[[int], None] = lambda size: None,
        model_lock: threading.Lock | None = None,
        name: str = "model",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.read_batch = read_batch
        self.max_batch_size = max_batch_size
        self.queue_deadline_s = queue_deadline_s
        self.on_batch = on_batch
        self.model_lock = model_lock or threading.Lock()
        self._queue: deque[_Job[Result]] = deque()
        self._queued = threading.Condition()
        # A daemon: it holds no state worth a clean stop, and the process may exit while it waits.
        threading.Thread(target=self._serve, name=f"batcher-{name}", daemon=True).start()

    async def read(self, pixels: np.ndarray) -> tuple[Result, int]:
        """One model input -> (its result, how many inputs were read in the same batch)."""
        loop = asyncio.get_running_loop()
        job = _Job(pixels, time.monotonic(), loop.create_future(), loop)
        with self._queued:
            self._queue.append(job)
            self._queued.notify()
        return await job.future

    def _next_batch(self) -> list[_Job[Result]]:
        """Waits for work; returns up to max_batch_size jobs, failing those queued past the deadline."""
        with self._queued:
            self._queued.wait_for(lambda: self._queue)
            now, batch = time.monotonic(), []
            while self._queue and len(batch) < self.max_batch_size:
                job = self._queue.popleft()
                if job.future.done():  # cancelled, its client gone (a racy read: at worst it is read anyway)
                    continue
                if now - job.queued_at > self.queue_deadline_s:
                    _settle([job], Overloaded(f"queued for more than {self.queue_deadline_s:g} s"))
                else:
                    batch.append(job)
            return batch

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                continue
            try:
                with self.model_lock:
                    results = self.read_batch(np.stack([job.pixels for job in batch]))
            except Exception as error:  # every request of a batch the model failed on gets the error
                _settle(batch, error)
                continue
            self.on_batch(len(batch))
            _settle(batch, [(result, len(batch)) for result in results])


def _settle(jobs: list[_Job], outcome: BaseException | list) -> None:
    """Hands results (one per job) or an error (for all) to the jobs' event loops, one wakeup per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, object]]] = {}
    for index, job in enumerate(jobs):
        value = outcome if isinstance(outcome, BaseException) else outcome[index]
        by_loop.setdefault(job.loop, []).append((job.future, value))
    for loop, settlements in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these results any more
            loop.call_soon_threadsafe(_resolve, settlements)


def _resolve(settlements: list[tuple[asyncio.Future, object]]) -> None:
    for future, value in settlements:
        if future.done():  # its client went away
            continue
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)
