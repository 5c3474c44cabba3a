"""Scoring requests with one model version: the same ModelBundle path as batch scoring, batched.

Rows go through :meth:`ModelBundle.score`, exactly as ``raymlops score`` does, so a served
prediction equals the batch one. Requests that arrive together are merged into one call by a small
batcher per version (:class:`Batcher`): the fixed cost per call (one ONNX or ``tf.function`` call,
one finiteness test) is then paid once for all of them. The batcher is bounded in requests and in
bytes, so 64 large bodies are never merged into one huge call, and a batch with many rows is scored
in a worker thread so that the replica's event loop (which, in Serve's throughput-optimized mode, is
also the one that answers health checks and reads sockets) keeps moving. Small batches are scored
on the loop: a thread hop and the GIL hand-over cost more than a one-row ONNX call.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from raymlops.model import ModelBundle, RowCheck

from ._protocols import Columns

__all__ = [
    "DEFAULT_MAX_BATCH_BYTES",
    "OFFLOAD_ROWS",
    "Batcher",
    "ScoreOutcome",
    "VersionScorer",
    "score_batch",
]

_MAX_REASONS = 5
#: Most request-body bytes merged into one scoring call.
DEFAULT_MAX_BATCH_BYTES = 8 * 1024 * 1024
#: Batches with more rows than this are scored in a worker thread, off the event loop.
OFFLOAD_ROWS = 512


@dataclass
class ScoreOutcome:
    """What one request gets back from a batch.

    Attributes:
        labels: predicted labels (or values), one per row; None when rows were rejected.
        probabilities: class probabilities (n, k) for a classifier, else None.
        error: why rows were rejected (names row, column and value), or None.
        check: the batch's row check (the checked values, for the request log).
        start: where this request's rows start in ``check``.
    """

    labels: np.ndarray | None
    probabilities: np.ndarray | None
    error: str | None
    check: RowCheck | None = None
    start: int = 0

    def inputs(self, bundle: ModelBundle) -> dict[str, np.ndarray] | None:
        """The request's rows as the model saw them, per feature; built only when a request is logged."""
        if self.check is None or self.labels is None:
            return None
        rows = np.arange(self.start, self.start + len(self.labels))
        return self.check.columns(bundle.schema, rows)


def _merge(parts: list[Columns], features: list[str]) -> Any:
    """One input for :meth:`ModelBundle.score`: a matrix when every part has one, else columns."""
    matrices = [p.matrix for p in parts]
    if all(m is not None for m in matrices):
        return matrices[0] if len(parts) == 1 else np.concatenate(matrices)  # type: ignore[arg-type]
    if len(parts) == 1:
        return parts[0].data
    merged: dict[str, Any] = {}
    for f in features:
        pieces = [p.data[f] for p in parts]
        if all(isinstance(x, np.ndarray) and x.dtype.kind == "f" for x in pieces):
            merged[f] = np.concatenate(pieces)
        else:
            merged[f] = list(itertools.chain.from_iterable(list(x) for x in pieces))
    return merged


def _reject_message(reasons: np.ndarray, start: int, n_rows: int) -> str:
    bad = [(i, reasons[start + i]) for i in range(n_rows) if reasons[start + i] is not None]
    shown = "; ".join(f"row {i}: {r}" for i, r in bad[:_MAX_REASONS])
    more = f"; and {len(bad) - _MAX_REASONS} more" if len(bad) > _MAX_REASONS else ""
    return f"{len(bad)} of {n_rows} row(s) cannot be scored: {shown}{more}"


def score_batch(bundle: ModelBundle, parts: list[Columns]) -> list[ScoreOutcome]:
    """Check, transform and score several requests' rows at once; one outcome per request.

    A request with a bad row is rejected on its own; the other requests in the batch are scored.
    """
    scored = bundle.score(_merge(parts, bundle.schema.features))
    valid = scored.valid
    all_valid = scored.check.all_valid or bool(valid.all())
    probabilities = scored.probabilities
    scored_pos = None if all_valid else np.cumsum(valid) - 1  # each row's position among scored rows
    outcomes: list[ScoreOutcome] = []
    start = 0
    for part in parts:
        stop = start + part.n_rows
        if all_valid or valid[start:stop].all():
            lo = start if scored_pos is None else (int(scored_pos[start]) if part.n_rows else 0)
            hi = lo + part.n_rows
            outcomes.append(
                ScoreOutcome(
                    labels=scored.labels[lo:hi],
                    probabilities=None if probabilities is None else probabilities[lo:hi],
                    error=None,
                    check=scored.check,
                    start=start,
                )
            )
        else:
            assert scored.check.reasons is not None
            outcomes.append(
                ScoreOutcome(None, None, _reject_message(scored.check.reasons, start, part.n_rows))
            )
        start = stop
    return outcomes


class Batcher:
    """Merge concurrent requests into one scoring call, bounded in requests and in bytes.

    The first request of a batch waits ``wait_s`` for company (only when the replica has other
    requests in flight, see :meth:`VersionScorer.score`), then up to ``max_batch_size`` queued
    requests whose bodies sum to at most ``max_batch_bytes`` are scored together; the rest wait for
    the next call. A batch of more than ``offload_rows`` rows is scored in a worker thread.

    Args:
        score: scores a list of requests' columns, one outcome each.
        max_batch_size: most requests per call.
        wait_s: how long the first request of a batch waits for others.
        max_batch_bytes: most body bytes per call (one request larger than this is scored alone).
        offload_rows: rows above which a batch leaves the event loop.
    """

    def __init__(
        self,
        score: Callable[[list[Columns]], list[ScoreOutcome]],
        max_batch_size: int,
        wait_s: float,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        offload_rows: int = OFFLOAD_ROWS,
    ) -> None:
        self._score = score
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.max_batch_bytes = max_batch_bytes
        self.offload_rows = offload_rows
        self._pending: deque[tuple[Columns, asyncio.Future[ScoreOutcome]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # scoring calls made (tests and the benchmark read it)

    @property
    def idle(self) -> bool:
        return not self._pending and (self._task is None or self._task.done())

    async def submit(self, columns: Columns) -> ScoreOutcome:
        """Queue one request's columns; returns its outcome once its batch is scored."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ScoreOutcome] = loop.create_future()
        self._pending.append((columns, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await future

    async def run(self, parts: list[Columns]) -> list[ScoreOutcome]:
        """Score ``parts`` now: on the loop when small, in a worker thread when large."""
        self.batches += 1
        if sum(p.n_rows for p in parts) > self.offload_rows:
            return await asyncio.to_thread(self._score, parts)
        return self._score(parts)

    async def _drain(self) -> None:
        while self._pending:
            if self.wait_s > 0 and len(self._pending) < self.max_batch_size:
                await asyncio.sleep(self.wait_s)
            batch = self._take()
            if not batch:
                continue
            try:
                outcomes = await self.run([columns for columns, _ in batch])
            except Exception as err:  # noqa: BLE001 - each waiting request gets the error, the loop goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)

    def _take(self) -> list[tuple[Columns, asyncio.Future[ScoreOutcome]]]:
        batch: list[tuple[Columns, asyncio.Future[ScoreOutcome]]] = []
        n_bytes = 0
        while self._pending:
            columns, future = self._pending[0]
            full = len(batch) >= self.max_batch_size or n_bytes + columns.n_bytes > self.max_batch_bytes
            if batch and full:
                break
            self._pending.popleft()
            if future.done():  # the client went away while it waited
                continue
            batch.append((columns, future))
            n_bytes += columns.n_bytes
        return batch


class VersionScorer:
    """One loaded model version with its own batch queue (requests of two versions never mix).

    Args:
        bundle: the loaded, verified model.
        max_batch_size: most requests merged into one scoring call.
        batch_wait_timeout_s: how long the first request of a batch waits for company.
        max_batch_bytes: most request-body bytes merged into one scoring call.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> None:
        self.bundle = bundle
        self.version = int(bundle.version or 0)
        self.batcher = Batcher(
            lambda parts: score_batch(bundle, parts), max_batch_size, batch_wait_timeout_s, max_batch_bytes
        )

    async def score(self, columns: Columns, alone: bool = False) -> ScoreOutcome:
        """Score one request's rows: through the batch queue, or at once when it is ``alone``.

        A request with no other request in flight has nobody to wait for: skipping the queue saves
        the batch wait and a hop through the queue's task at low load.
        """
        if alone and self.batcher.idle:
            (outcome,) = await self.batcher.run([columns])
            return outcome
        return await self.batcher.submit(columns)

    def set_batching(
        self, max_batch_size: int, batch_wait_timeout_s: float, max_batch_bytes: int | None = None
    ) -> None:
        """Apply new batching settings (a ``user_config`` change) without reloading the model."""
        self.batcher.max_batch_size = max_batch_size
        self.batcher.wait_s = batch_wait_timeout_s
        if max_batch_bytes is not None:
            self.batcher.max_batch_bytes = max_batch_bytes
