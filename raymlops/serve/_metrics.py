"""Serving metrics through Ray's metrics system (exported in Prometheus format by every node).

``ray.serve.metrics`` adds the deployment, replica and application tags; these add model, version
and protocol so a canary's error rate and prediction mix can be compared with the champion's.
Outside a Serve replica (unit tests, the bare benchmark) a no-op stands in.

Counts are added up in memory on the request path and handed to Ray by :meth:`ServeMetrics.flush`
(the replica's watcher thread calls it every poll): one Ray metric call costs ~10 us, and a request
made five of them. Latencies are observed one by one (a histogram needs each value) but also at
flush time, off the request path.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

__all__ = ["ServeMetrics", "value_bucket"]

LATENCY_BOUNDARIES_MS = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000, 2500, 5000]
_MAX_LABEL_TAGS = 50


def value_bucket(value: float) -> str:
    """A coarse, bounded label for a regression prediction: sign and power of ten (``+1e2``)."""
    if not math.isfinite(value):
        return "nan"
    if value == 0:
        return "0"
    sign = "+" if value > 0 else "-"
    return f"{sign}1e{math.floor(math.log10(abs(value)))}"


class ServeMetrics:
    """Request count, latency, errors and prediction distribution per model and version."""

    def __init__(self) -> None:
        try:
            from ray.serve import metrics as serve_metrics

            metrics: Any = serve_metrics  # its stubs type tag_keys as a 1-tuple

            self.requests: Any = metrics.Counter(
                "raymlops_requests",
                description="Requests answered, by model, version, protocol and HTTP status.",
                tag_keys=("model", "version", "protocol", "status"),
            )
            self.latency: Any = metrics.Histogram(
                "raymlops_request_latency_ms",
                description="Time from request arrival in the replica to the answer, in milliseconds.",
                boundaries=LATENCY_BOUNDARIES_MS,
                tag_keys=("model", "version", "protocol"),
            )
            self.errors: Any = metrics.Counter(
                "raymlops_errors",
                description="Requests answered with an error, by model, version and reason.",
                tag_keys=("model", "version", "reason"),
            )
            self.predictions: Any = metrics.Counter(
                "raymlops_predictions",
                description="Predicted rows by label (classifiers) or value bucket (regressors).",
                tag_keys=("model", "version", "label"),
            )
            self.rows: Any = metrics.Counter(
                "raymlops_rows",
                description="Rows scored, by model and version.",
                tag_keys=("model", "version"),
            )
        except Exception:  # outside Ray (tests of the pure parts, the bare benchmark): record nothing
            self.requests = self.latency = self.errors = self.predictions = self.rows = None
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._latencies: list[tuple[float, tuple[tuple[str, str], ...]]] = []

    def _add(self, metric: str, tags: tuple[tuple[str, str], ...], value: float = 1.0) -> None:
        key = (metric, tags)
        self._counts[key] = self._counts.get(key, 0.0) + value

    def flush(self) -> None:
        """Hand everything counted since the last flush to Ray's metrics (any thread)."""
        if self.requests is None:
            return
        with self._lock:
            counts, self._counts = self._counts, {}
            latencies, self._latencies = self._latencies, []
        for (metric, tags), value in counts.items():
            getattr(self, metric).inc(value, dict(tags))
        for value, tags in latencies:
            self.latency.observe(value, dict(tags))

    def record(
        self,
        model: str,
        version: str,
        protocol: str,
        status: int,
        latency_ms: float,
        reason: str | None = None,
    ) -> None:
        """Count one answered request (and its error reason, if any)."""
        if self.requests is None:
            return
        base = (("model", model), ("version", version))
        with self._lock:
            self._add("requests", (*base, ("protocol", protocol), ("status", str(status))))
            self._latencies.append((latency_ms, (*base, ("protocol", protocol))))
            if reason is not None:
                self._add("errors", (*base, ("reason", reason)))

    def record_predictions(self, model: str, version: str, labels: np.ndarray, classification: bool) -> None:
        """Add the rows of one answered request to the prediction distribution."""
        if self.predictions is None:
            return
        base = (("model", model), ("version", version))
        if len(labels) == 1:  # the common case: one row, no np.unique
            value = labels[0]
            pairs = [(str(value) if classification else value_bucket(float(value)), 1)]
        elif classification:
            values, counts = np.unique(labels.astype(str), return_counts=True)
            pairs = list(zip(values.tolist(), counts.tolist(), strict=True))
        else:
            values, counts = np.unique([value_bucket(float(v)) for v in labels], return_counts=True)
            pairs = list(zip(values.tolist(), counts.tolist(), strict=True))
        with self._lock:
            self._add("rows", base, len(labels))
            for label, count in pairs[:_MAX_LABEL_TAGS]:
                self._add("predictions", (*base, ("label", str(label))), count)
