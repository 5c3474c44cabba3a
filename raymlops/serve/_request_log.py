"""A sampled log of served traffic (inputs and predictions) written as Parquet for monitoring.

Each replica buffers the sampled rows in memory and a background thread writes them as one Parquet
file per model and flush, under ``<uri>/<model>/date=YYYY-MM-DD/``, on any pyarrow filesystem. The
request path only pays for sampling and a frame copy; file writes never block an answer. Inputs are
logged as the model saw them (after the model's row checks), next to the same prediction
columns ``raymlops score`` writes, so drift checks and feedback joins read both alike.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = ["RequestLog"]

log = logging.getLogger("raymlops.serve")


class RequestLog:
    """Sample requests and write their rows to Parquet.

    Args:
        uri: folder or URI (``s3://...``) that receives the files.
        sample_rate: share of requests logged, 0..1.
        flush_rows: write once this many rows are buffered (also written every flush interval).
    """

    def __init__(self, uri: str, sample_rate: float, flush_rows: int = 5000) -> None:
        self.uri = uri
        self.sample_rate = sample_rate
        self.flush_rows = flush_rows
        if "://" in uri:
            self._fs, self._root = pafs.FileSystem.from_uri(uri)
        else:
            self._fs, self._root = pafs.LocalFileSystem(), uri
        self._root = self._root.rstrip("/") or self._root
        self._lock = threading.Lock()
        self._buffers: dict[str, list[pd.DataFrame]] = {}
        self._buffered = 0
        self._writer_id = uuid.uuid4().hex[:12]
        self._seq = 0

    @property
    def pending_rows(self) -> int:
        return self._buffered

    def sampled(self) -> bool:
        """Whether to log the current request (decided before any copying is done)."""
        return self.sample_rate > 0 and (self.sample_rate >= 1 or random.random() < self.sample_rate)

    def add(
        self,
        model: str,
        version: int,
        protocol: str,
        request_id: str | None,
        inputs: dict[str, np.ndarray],
        labels: np.ndarray,
        probabilities: np.ndarray | None,
        classes: list[Any] | None,
    ) -> None:
        """Buffer one request's rows with their predictions."""
        frame = pd.DataFrame(inputs)
        frame.insert(0, "served_at", pd.Timestamp(datetime.now(timezone.utc)))
        frame.insert(1, "request_id", request_id or "")
        frame.insert(2, "model_name", model)
        frame.insert(3, "model_version", version)
        frame.insert(4, "protocol", protocol)
        frame["prediction"] = labels
        if probabilities is not None:
            for j, c in enumerate(classes or []):
                frame[f"proba_{c}"] = probabilities[:, j]
        with self._lock:
            self._buffers.setdefault(model, []).append(frame)
            self._buffered += len(frame)

    def flush(self) -> list[str]:
        """Write everything buffered; returns the files written. Failures are logged, never raised."""
        with self._lock:
            buffers, self._buffers, self._buffered = self._buffers, {}, 0
        written = []
        for model, frames in buffers.items():
            table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
            day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
            folder = f"{self._root}/{model}/date={day}"
            self._seq += 1
            path = f"{folder}/part-{int(time.time() * 1000)}-{self._writer_id}-{self._seq:05d}.parquet"
            try:
                self._fs.create_dir(folder, recursive=True)
                pq.write_table(table, path, filesystem=self._fs)
                written.append(path)
            except Exception as err:  # monitoring must never take serving down
                log.warning("request log: could not write %s: %s", path, err)
        return written
