"""The per-version batcher on its own: bounded in requests and bytes, large batches off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from raymlops.serve._protocols import Columns
from raymlops.serve._scoring import Batcher, ScoreOutcome


def _columns(n_rows: int = 1, n_bytes: int = 100) -> Columns:
    matrix = np.zeros((n_rows, 3))
    return Columns({f: matrix[:, j] for j, f in enumerate("abc")}, n_rows, matrix=matrix, n_bytes=n_bytes)


class Recorder:
    """A scoring function that records each call's size and thread, and takes ``seconds``."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.calls: list[tuple[int, int, str]] = []

    def __call__(self, parts: list[Columns]) -> list[ScoreOutcome]:
        self.calls.append((len(parts), sum(p.n_bytes for p in parts), threading.current_thread().name))
        if self.seconds:
            time.sleep(self.seconds)
        return [ScoreOutcome(np.zeros(p.n_rows), None, None) for p in parts]


def test_concurrent_requests_share_scoring_calls():
    record = Recorder(seconds=0.002)
    batcher = Batcher(record, max_batch_size=64, wait_s=0.002)

    async def run() -> list[ScoreOutcome]:
        return await asyncio.gather(*(batcher.submit(_columns()) for _ in range(32)))

    outcomes = asyncio.run(run())
    assert len(outcomes) == 32 and all(o.labels is not None for o in outcomes)
    assert sum(n for n, _, _ in record.calls) == 32
    assert len(record.calls) <= 4, record.calls  # 32 requests, a handful of calls


def test_a_batch_never_holds_more_bytes_than_the_bound():
    record = Recorder()
    mib = 1024 * 1024
    batcher = Batcher(record, max_batch_size=64, wait_s=0.001, max_batch_bytes=8 * mib)

    async def run() -> None:
        await asyncio.gather(*(batcher.submit(_columns(n_bytes=3 * mib)) for _ in range(10)))

    asyncio.run(run())
    assert sum(n for n, _, _ in record.calls) == 10
    assert all(size <= 8 * mib for _, size, _ in record.calls), record.calls
    assert max(n for n, _, _ in record.calls) == 2


def test_one_request_larger_than_the_byte_bound_is_still_scored_alone():
    record = Recorder()
    batcher = Batcher(record, max_batch_size=64, wait_s=0.0, max_batch_bytes=1024)
    outcome = asyncio.run(batcher.submit(_columns(n_bytes=10_000)))
    assert outcome.labels is not None and record.calls == [(1, 10_000, record.calls[0][2])]


def test_a_large_batch_is_scored_off_the_event_loop_which_keeps_answering():
    record = Recorder(seconds=0.3)
    batcher = Batcher(record, max_batch_size=64, wait_s=0.0, offload_rows=100)
    ticks: list[float] = []

    async def heartbeat(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    async def run() -> None:
        stop = asyncio.Event()
        beat = asyncio.create_task(heartbeat(stop))
        await batcher.submit(_columns(n_rows=1000))
        stop.set()
        await beat

    asyncio.run(run())
    ((_, _, thread),) = record.calls
    assert thread != threading.main_thread().name
    assert len(ticks) >= 10, "the event loop stalled while a large batch was scored"


def test_small_batches_stay_on_the_loop():
    record = Recorder()
    batcher = Batcher(record, max_batch_size=64, wait_s=0.0)
    asyncio.run(batcher.submit(_columns()))
    assert record.calls[0][2] == threading.main_thread().name


def test_a_scoring_failure_reaches_every_request_of_the_batch_and_the_batcher_goes_on():
    def broken(parts: list[Columns]) -> list[ScoreOutcome]:
        raise RuntimeError("model exploded")

    batcher = Batcher(broken, max_batch_size=8, wait_s=0.001)

    async def run() -> list[object]:
        return await asyncio.gather(*(batcher.submit(_columns()) for _ in range(3)), return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, RuntimeError) for r in results)
    batcher._score = Recorder()  # type: ignore[assignment]
    assert asyncio.run(batcher.submit(_columns())).labels is not None
