"""Adaptive batching inside the serving process: images of concurrent requests are read in one model call.

No wait window: a request that finds the model idle is read at once, alone, so a lone client pays nothing for
batching. While the model reads a batch, new requests queue; the moment it is done it takes everything queued
(up to `max_batch_size`) as the next batch. Batches grow with the load by themselves, and the model never idles
while requests wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
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


class Batcher(Generic[Result]):
    """Queues single model inputs and reads them in batches with `read_batch` on `executor`.

    `max_wait_s` is a deadline, not a wait: a request still queued after it fails with Overloaded (the service
    answers 503) instead of making the queue longer for everyone after it.
    """

    def __init__(
        self,
        read_batch: Callable[[np.ndarray], Sequence[Result]],
        executor: Executor,
        max_batch_size: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.read_batch = read_batch
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._queue: deque[_Job[Result]] = deque()
        self._drainer: asyncio.Task[None] | None = None  # runs while the queue has jobs

    async def read(self, pixels: np.ndarray) -> tuple[Result, int]:
        """One model input -> (its result, how many inputs were read in the same batch)."""
        loop = asyncio.get_running_loop()
        job = _Job(pixels, time.monotonic(), loop.create_future())
        self._queue.append(job)
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return await job.future

    def _next_batch(self) -> list[_Job[Result]]:
        now, batch = time.monotonic(), []
        while self._queue and len(batch) < self.max_batch_size:
            job = self._queue.popleft()
            if job.future.done():  # its client went away
                continue
            if now - job.queued_at > self.max_wait_s:
                job.future.set_exception(Overloaded(f"queued for more than {self.max_wait_s:g} s"))
                continue
            batch.append(job)
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch = self._next_batch()
                if not batch:
                    continue
                try:
                    inputs = np.stack([job.pixels for job in batch])
                    results = await loop.run_in_executor(self.executor, self.read_batch, inputs)
                except Exception as error:  # every request of a batch the model failed on gets the error
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(error)
                    continue
                self.on_batch(len(batch))
                for job, result in zip(batch, results):
                    if not job.future.done():
                        job.future.set_result((result, len(batch)))
        finally:
            self._drainer = None
