"""Reference statistics saved with every version: what "normal" input and output look like.

Monitoring compares new data with these, so they hold enough for both drift measures:

* per numeric feature, quantile bin edges and the training share in each bin (for PSI), summary
  statistics and null rate;
* per categorical feature, category frequencies and null rate;
* the prediction distribution on the held-out rows (class frequencies, or bins of predicted values);
* a random sample of up to ``sample_size`` training rows (``reference_sample.parquet``), so a
  Kolmogorov-Smirnov test can be run against raw values rather than against coarse bins.

Bins are right-closed, ``(-inf, e0], (e0, e1], ..., (ek, inf)``, so a feature with a spike (many
zeros, say) gets the spike in a bin of its own instead of a bin split through the middle of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raymlops.errors import NotFoundError

__all__ = [
    "REFERENCE_FILE",
    "SAMPLE_FILE",
    "bin_counts",
    "build_reference",
    "category_key",
    "load_reference",
    "numeric_edges",
    "numeric_values",
    "write_reference",
]

REFERENCE_FILE = "reference.json"
SAMPLE_FILE = "reference_sample.parquet"
FORMAT_VERSION = 1
_DISCRETE_MAX = 20
_MAX_CATEGORIES = 50
_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def numeric_values(series: pd.Series) -> np.ndarray:
    """A column as float64 with NaN for nulls and for values that are not numbers."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype("float64").to_numpy()
    numeric = pd.to_numeric(series, errors="coerce")
    return np.asarray(numeric.to_numpy(dtype="float64", na_value=np.nan), dtype="float64")


def numeric_edges(values: np.ndarray, bins: int = 10) -> list[float]:
    """Bin edges from the reference values: deciles, or every value for a feature with few values."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return []
    unique = np.unique(finite)
    if unique.size <= _DISCRETE_MAX:
        return [float(v) for v in unique]
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
    return [float(v) for v in edges]


def bin_counts(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Counts of the finite ``values`` in the ``len(edges) + 1`` right-closed bins."""
    finite = values[np.isfinite(values)]
    idx = np.searchsorted(np.asarray(edges, dtype="float64"), finite, side="left")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.int64)


def category_key(value: Any) -> str:
    """Categories are compared as text, so ``1`` in a CSV and ``"1"`` in a request log are the same."""
    return str(value)


def _numeric_stats(values: np.ndarray, bins: int) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    edges = numeric_edges(values, bins)
    counts = bin_counts(values, edges)
    total = max(int(counts.sum()), 1)
    out: dict[str, Any] = {
        "type": "numeric",
        "null_rate": float(np.mean(~np.isfinite(values))) if values.size else 0.0,
        "bin_edges": edges,
        "bin_fractions": [float(c / total) for c in counts],
    }
    if finite.size:
        out.update(
            mean=float(finite.mean()),
            std=float(finite.std()),
            min=float(finite.min()),
            max=float(finite.max()),
            quantiles={
                str(q): float(v) for q, v in zip(_QUANTILES, np.quantile(finite, _QUANTILES), strict=True)
            },
        )
    return out


def _categorical_stats(series: pd.Series) -> dict[str, Any]:
    null = series.isna()
    counts = series[~null].map(category_key).value_counts()
    total = max(int(counts.sum()), 1)
    top = counts.iloc[:_MAX_CATEGORIES]
    return {
        "type": "categorical",
        "null_rate": float(null.mean()) if len(series) else 0.0,
        "frequencies": {str(k): float(v / total) for k, v in top.items()},
        "other_fraction": float(counts.iloc[_MAX_CATEGORIES:].sum() / total),
        "distinct": int(counts.size),
    }


def _prediction_stats(
    scores: np.ndarray, task: str, classes: list[Any] | None, bins: int, sample_size: int, seed: int
) -> dict[str, Any]:
    if task == "classification":
        labels = [category_key(c) for c in classes or []]
        pred = np.asarray(scores).argmax(axis=1) if len(scores) else np.zeros(0, dtype=int)
        counts = np.bincount(pred, minlength=len(labels))
        total = max(int(counts.sum()), 1)
        return {
            "type": "categorical",
            "rows": int(len(pred)),
            "frequencies": {lab: float(counts[i] / total) for i, lab in enumerate(labels)},
            "mean_probability": {
                lab: float(np.asarray(scores)[:, i].mean()) if len(scores) else 0.0
                for i, lab in enumerate(labels)
            },
        }
    values = np.asarray(scores, dtype="float64").reshape(-1)
    out = _numeric_stats(values, bins)
    rng = np.random.default_rng(seed)
    sample = values if values.size <= sample_size else rng.choice(values, size=sample_size, replace=False)
    out.update(rows=int(values.size), sample=[float(f"{v:.7g}") for v in sample])
    return out


def build_reference(
    frame: pd.DataFrame,
    schema: Any,
    held_out_scores: np.ndarray,
    *,
    bins: int = 10,
    sample_size: int = 10_000,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Reference statistics of the training rows and of the model's held-out predictions.

    Args:
        frame: the training rows (raw feature columns, as validated).
        schema: the model's :class:`~raymlops.data.schema.TableSchema`.
        held_out_scores: the model's scores on the held-out rows; held-out rather than training rows
            because a forest's predictions on its own training rows are overconfident, and live data
            behaves like held-out data.
        bins: quantile bins per numeric feature (PSI is computed over them).
        sample_size: rows kept for Kolmogorov-Smirnov tests.
        seed: makes the sample reproducible.
        extra: more keys for the JSON (held-out metrics, thresholds...).

    Returns:
        the JSON-ready statistics and the sample frame (feature columns only).
    """
    features: dict[str, Any] = {}
    for col in schema.features:
        if col in schema.categorical:
            features[col] = _categorical_stats(frame[col])
        else:
            features[col] = _numeric_stats(numeric_values(frame[col]), bins)
    rng = np.random.default_rng(seed)
    if len(frame) > sample_size:
        rows = np.sort(rng.choice(len(frame), size=sample_size, replace=False))
        sample_src = frame.iloc[rows]
    else:
        sample_src = frame
    sample = pd.DataFrame(index=range(len(sample_src)))
    for col in schema.features:
        if col in schema.categorical:
            sample[col] = [
                None if pd.isna(v) else category_key(v) for v in sample_src[col].to_numpy(dtype=object)
            ]
        else:
            sample[col] = numeric_values(sample_src[col])
    reference = {
        "format": FORMAT_VERSION,
        "rows": int(len(frame)),
        "bins": bins,
        "task": schema.task,
        "target": schema.target,
        "features": features,
        "prediction": _prediction_stats(
            held_out_scores, schema.task, schema.classes, bins, sample_size, seed
        ),
        "sample": {"file": SAMPLE_FILE, "rows": int(len(sample))},
        **(extra or {}),
    }
    return reference, sample


def write_reference(folder: Path, reference: dict[str, Any], sample: pd.DataFrame) -> list[str]:
    """Write ``reference.json`` and the sample into a version's staging folder."""
    folder = Path(folder)
    (folder / REFERENCE_FILE).write_text(json.dumps(reference, indent=1, default=str))
    sample.to_parquet(folder / SAMPLE_FILE, index=False)
    return [REFERENCE_FILE, SAMPLE_FILE]


def load_reference(folder: Path) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """Read a version's reference; the sample is None for versions written without one."""
    folder = Path(folder)
    path = folder / REFERENCE_FILE
    if not path.exists():
        raise NotFoundError(
            f"{folder} has no {REFERENCE_FILE}: this version was registered before reference statistics "
            "were saved; rerun its pipeline to monitor it"
        )
    reference = json.loads(path.read_text())
    sample_path = folder / reference.get("sample", {}).get("file", SAMPLE_FILE)
    sample = pd.read_parquet(sample_path) if sample_path.exists() else None
    return reference, sample
