"""The serving process's adaptive batching: no wait when idle, batches under load, a deadline, errors contained."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from captcha_mlops.batching import Batcher, Overloaded


class SlowModel:
    """Returns each input's first pixel; records batch sizes; can be held busy until released."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.batch_sizes: list[int] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, batch: np.ndarray) -> list[int]:
        self.release.wait(timeout=10)
        time.sleep(self.seconds)
        self.batch_sizes.append(len(batch))
        return [int(image[0, 0, 0]) for image in batch]


def pixels(value: int) -> np.ndarray:
    return np.full((2, 3, 1), value, np.uint8)


def test_a_lone_request_is_read_at_once_alone() -> None:
    model = SlowModel()
    batcher = Batcher(model, max_batch_size=8, queue_deadline_s=5)

    async def one() -> tuple[int, int]:
        return await batcher.read(pixels(7))

    started = time.perf_counter()
    assert asyncio.run(one()) == (7, 1)
    assert time.perf_counter() - started < 1  # no batching window to wait out
    assert model.batch_sizes == [1]


def test_requests_queued_while_the_model_is_busy_are_read_together_in_order() -> None:
    model = SlowModel()
    sizes: list[int] = []
    batcher = Batcher(model, max_batch_size=4, queue_deadline_s=5, on_batch=sizes.append)

    async def burst() -> list[tuple[int, int]]:
        model.release.clear()  # the first request holds the model while nine more arrive
        first = asyncio.ensure_future(batcher.read(pixels(0)))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.read(pixels(value))) for value in range(1, 10)]
        await asyncio.sleep(0.05)
        model.release.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(burst())
    assert [value for value, _ in results] == list(range(10))  # each caller gets its own image's result
    assert model.batch_sizes == [1, 4, 4, 1] == sizes  # never above max_batch_size
    assert [size for _, size in results] == [1, 4, 4, 4, 4, 4, 4, 4, 4, 1]


def test_a_request_queued_past_the_deadline_is_refused_and_the_rest_go_on() -> None:
    model = SlowModel(seconds=0.3)
    batcher = Batcher(model, max_batch_size=1, queue_deadline_s=0.1)

    async def burst() -> list[object]:
        return await asyncio.gather(*(batcher.read(pixels(v)) for v in range(3)), return_exceptions=True)

    first, second, third = asyncio.run(burst())
    assert first == (0, 1)
    assert isinstance(second, Overloaded) and isinstance(third, Overloaded)  # waited 0.3 s > 0.1 s
    assert asyncio.run(burst())[0] == (0, 1)  # the batcher still serves


def test_a_model_error_reaches_every_request_of_its_batch_only() -> None:
    model = SlowModel()

    def fails_on_13(batch: np.ndarray) -> list[int]:
        results = model(batch)
        if 13 in results:
            raise RuntimeError("model failed")
        return results

    batcher = Batcher(fails_on_13, max_batch_size=8, queue_deadline_s=5)

    async def rounds() -> list[object]:
        model.release.clear()  # hold the model so that 13 and 2 are queued, then read, together
        busy = asyncio.ensure_future(batcher.read(pixels(1)))
        await asyncio.sleep(0.05)
        together = [asyncio.ensure_future(batcher.read(pixels(v))) for v in (13, 2)]
        await asyncio.sleep(0.05)
        model.release.set()
        outcomes = await asyncio.gather(busy, *together, return_exceptions=True)
        return [*outcomes, await batcher.read(pixels(3))]

    busy, failed, failed_too, later = asyncio.run(rounds())
    assert busy == (1, 1) and later == (3, 1)
    assert isinstance(failed, RuntimeError) and isinstance(failed_too, RuntimeError)


def test_a_request_whose_client_left_is_not_read() -> None:
    model = SlowModel()
    batcher = Batcher(model, max_batch_size=8, queue_deadline_s=5)

    async def cancel_one() -> tuple[int, int]:
        model.release.clear()
        busy = asyncio.ensure_future(batcher.read(pixels(0)))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.read(pixels(1)))
        kept = asyncio.ensure_future(batcher.read(pixels(2)))
        await asyncio.sleep(0.01)
        gone.cancel()
        model.release.set()
        await busy
        return await kept

    assert asyncio.run(cancel_one()) == (2, 1)
    assert model.batch_sizes == [1, 1]


def test_batchers_sharing_a_model_lock_never_run_their_models_at_once() -> None:
    running, overlaps = 0, 0
    count_lock = threading.Lock()

    def model(batch: np.ndarray) -> list[int]:
        nonlocal running, overlaps
        with count_lock:
            running += 1
            overlaps += running > 1
        time.sleep(0.01)
        with count_lock:
            running -= 1
        return [0] * len(batch)

    shared = threading.Lock()
    batchers = [Batcher(model, max_batch_size=2, queue_deadline_s=5, model_lock=shared) for _ in range(2)]

    async def both() -> list[tuple[int, int]]:
        return await asyncio.gather(*(batcher.read(pixels(0)) for batcher in batchers for _ in range(10)))

    assert len(asyncio.run(both())) == 20
    assert overlaps == 0


def test_max_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(SlowModel(), max_batch_size=0, queue_deadline_s=1)
