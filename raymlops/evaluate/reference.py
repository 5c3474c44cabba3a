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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raymlops.errors import NotFoundError

__all__ = [
    "REFERENCE_FILE",
    "SAMPLE_FILE",
    "CategoricalSummary",
    "HashSample",
    "NumericSummary",
    "PredictionPartial",
    "ReferencePartial",
    "admit_limit",
    "bin_counts",
    "build_reference",
    "build_reference_from_partials",
    "exact_bin_counts",
    "category_key",
    "load_reference",
    "numeric_edges",
    "numeric_values",
    "reference_partial",
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


# ---- the same statistics from mergeable partial results ------------------------------------------
#
# A Ray task turns each batch of training rows into a ReferencePartial; partials merge in any order;
# build_reference_from_partials gives the JSON and sample build_reference gives. Counts, null rates,
# mean, std, min, max and category frequencies are exact whatever the size. Bin edges, bin fractions
# and quantiles need the sorted values: they are computed from a uniform sample of at most
# QUANTILE_ROWS rows (the rows with the lowest seeded hash of their content, so the same rows
# whatever the block layout), which is every row, and so exact, when the data has no more rows;
# with more, quantile ranks are off by ~1/sqrt(QUANTILE_ROWS) (0.3% at 100k rows), far inside what
# PSI over ten bins can notice. A feature with few values (<= 20) gets exact edges and fractions at
# any size, from its per-value counts. Pass exact bin counts (a second pass, :func:`bin_counts`
# per batch) to ``build_reference_from_partials(bin_counts_by_feature=...)`` to make fractions exact.

#: Rows kept for quantiles and bin edges (and the first ``sample_size`` of them for the KS sample).
QUANTILE_ROWS = 100_000
#: Distinct categories counted per categorical feature; past it only the most frequent are kept.
CATEGORY_TRACK_MAX = 100_000


@dataclass
class HashSample:
    """The ``cap`` rows with the lowest keys: a uniform sample that does not depend on the layout.

    Attributes:
        cap: rows kept at most.
        keys: the kept rows' uint64 keys, increasing.
        columns: column -> values of the kept rows, in key order.
        seen: rows offered in all (so ``complete`` says whether the sample is every row).
    """

    cap: int
    keys: np.ndarray
    columns: dict[str, np.ndarray]
    seen: int = 0
    admit: int | None = None

    @classmethod
    def from_batch(
        cls, keys: np.ndarray, columns: dict[str, np.ndarray], cap: int, admit: int | None = None
    ) -> HashSample:
        """The batch's ``cap`` lowest keys; with ``admit``, only those at or below it.

        ``admit`` (see :func:`admit_limit`) keeps a batch's partial to its share of the sample
        instead of up to ``cap`` rows: without it every row of a large pass reached the driver.
        """
        keys = np.asarray(keys, dtype=np.uint64)
        seen = len(keys)
        index = np.arange(seen)
        if admit is not None:
            index = np.flatnonzero(keys <= np.uint64(admit))
        order = index[np.argsort(keys[index], kind="stable")[:cap]]
        return cls(cap, keys[order], {c: np.asarray(v)[order] for c, v in columns.items()}, seen, admit)

    @property
    def complete(self) -> bool:
        return self.seen <= self.cap

    @property
    def exact(self) -> bool:
        """Whether this is the ``cap`` lowest keys of every row seen (an admission limit that let
        too few rows through, as many duplicate rows can, makes it a smaller sample)."""
        return self.admit is None or len(self.keys) >= min(self.cap, self.seen)

    def merge(self, other: HashSample) -> HashSample:
        keys = np.concatenate([self.keys, other.keys])
        order = np.argsort(keys, kind="stable")[: self.cap]
        names = [c for c in self.columns if c in other.columns]
        cols = {c: np.concatenate([self.columns[c], other.columns[c]])[order] for c in names}
        limits = [a for a in (self.admit, other.admit) if a is not None]
        admit = min(limits) if limits else None
        return HashSample(self.cap, keys[order], cols, self.seen + other.seen, admit)

    def frame(self, rows: int | None = None) -> pd.DataFrame:
        n = len(self.keys) if rows is None else min(rows, len(self.keys))
        return pd.DataFrame({c: v[:n] for c, v in self.columns.items()})


def admit_limit(rows: int | None, cap: int) -> int | None:
    """The highest key a batch passes on when ``rows`` rows in all feed a ``cap``-row sample.

    Keys are uniform 64-bit hashes, so about ``rows * limit / 2**64`` rows pass; the limit lets
    ``cap`` plus eight standard deviations through, and the merged sample is then the ``cap``
    lowest keys of all rows, the same as without a limit. ``None`` (keep all) at or below ``cap``.
    """
    if rows is None or rows <= cap:
        return None
    share = (cap + 8.0 * np.sqrt(cap) + 64.0) / rows
    return None if share >= 1.0 else min(int(share * float(2**64)), 2**64 - 1)


@dataclass
class NumericSummary:
    """Exact counts and moments of one numeric column; its distinct values while there are few.

    Attributes:
        rows: values seen (nulls and non-numbers included).
        finite: finite values among them.
        mean, m2: mean and sum of squared deviations of the finite values (Chan's merge).
        min, max: of the finite values.
        distinct: sorted distinct finite values and their counts, None past ``_DISCRETE_MAX``.
    """

    rows: int = 0
    finite: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")
    distinct: tuple[np.ndarray, np.ndarray] | None = field(
        default_factory=lambda: (np.zeros(0), np.zeros(0, dtype=np.int64))
    )

    @classmethod
    def from_values(cls, values: np.ndarray) -> NumericSummary:
        values = np.asarray(values, dtype="float64")
        good = values[np.isfinite(values)]
        if good.size == 0:
            return cls(rows=int(values.size))
        mean = float(good.mean())
        uniq, counts = np.unique(good, return_counts=True)
        return cls(
            int(values.size),
            int(good.size),
            mean,
            float(np.square(good - mean).sum()),
            float(good.min()),
            float(good.max()),
            (uniq, counts.astype(np.int64)) if uniq.size <= _DISCRETE_MAX else None,
        )

    def merge(self, other: NumericSummary) -> NumericSummary:
        n = self.finite + other.finite
        if n == 0:
            return NumericSummary(rows=self.rows + other.rows)
        delta = other.mean - self.mean
        mean = self.mean + delta * other.finite / n
        m2 = self.m2 + other.m2 + delta * delta * self.finite * other.finite / n
        distinct = None
        if self.distinct is not None and other.distinct is not None:
            uniq, inv = np.unique(np.concatenate([self.distinct[0], other.distinct[0]]), return_inverse=True)
            counts = np.bincount(inv, weights=np.concatenate([self.distinct[1], other.distinct[1]]))
            distinct = (uniq, counts.astype(np.int64)) if uniq.size <= _DISCRETE_MAX else None
        return NumericSummary(
            self.rows + other.rows,
            n,
            float(mean),
            float(m2),
            min(self.min, other.min),
            max(self.max, other.max),
            distinct,
        )

    def stats(self, sample: np.ndarray, bins: int, exact_counts: np.ndarray | None = None) -> dict[str, Any]:
        """``_numeric_stats``' dict: exact where the summary is, the rest from the uniform ``sample``."""
        sample = np.asarray(sample, dtype="float64")
        finite = sample[np.isfinite(sample)]
        if self.distinct is not None:
            uniq, counts = self.distinct
            edges = [float(v) for v in uniq]
            bin_total = np.append(counts, 0)  # bin i is (e_{i-1}, e_i]: exactly value e_i
        else:
            edges = numeric_edges(finite, bins) if finite.size else []
            bin_total = exact_counts if exact_counts is not None else bin_counts(finite, edges)
        total = max(int(np.sum(bin_total)), 1)
        out: dict[str, Any] = {
            "type": "numeric",
            "null_rate": float((self.rows - self.finite) / self.rows) if self.rows else 0.0,
            "bin_edges": edges,
            "bin_fractions": [float(c / total) for c in bin_total],
        }
        if self.finite:
            if self.distinct is not None:
                from raymlops.evaluate.fairness import _quantiles_from_counts

                qs = _quantiles_from_counts(self.distinct[0], self.distinct[1], list(_QUANTILES))
            else:
                qs = np.quantile(finite, _QUANTILES)
            out.update(
                mean=float(self.mean),
                std=float(np.sqrt(self.m2 / self.finite)),
                min=float(self.min),
                max=float(self.max),
                quantiles={str(q): float(v) for q, v in zip(_QUANTILES, qs, strict=True)},
            )
        return out


@dataclass
class CategoricalSummary:
    """Exact null and category counts of one categorical column (at most CATEGORY_TRACK_MAX kept).

    Attributes:
        rows: values seen.
        nulls: missing values.
        counts: category (as :func:`category_key` text) -> rows.
        untracked: rows of categories dropped past the cap (they count in ``other_fraction``).
        distinct_dropped: how many categories were dropped (so ``distinct`` stays a count).
    """

    rows: int = 0
    nulls: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    untracked: int = 0
    distinct_dropped: int = 0

    @classmethod
    def from_series(cls, series: pd.Series) -> CategoricalSummary:
        null = series.isna()
        counts = series[~null].map(category_key).value_counts()
        return cls(len(series), int(null.sum()), {str(k): int(v) for k, v in counts.items()})._bounded()

    def _bounded(self) -> CategoricalSummary:
        if len(self.counts) <= CATEGORY_TRACK_MAX:
            return self
        ordered = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        kept, dropped = ordered[:CATEGORY_TRACK_MAX], ordered[CATEGORY_TRACK_MAX:]
        return CategoricalSummary(
            self.rows,
            self.nulls,
            dict(kept),
            self.untracked + sum(v for _, v in dropped),
            self.distinct_dropped + len(dropped),
        )

    def merge(self, other: CategoricalSummary) -> CategoricalSummary:
        counts = dict(self.counts)
        for k, v in other.counts.items():
            counts[k] = counts.get(k, 0) + v
        return CategoricalSummary(
            self.rows + other.rows,
            self.nulls + other.nulls,
            counts,
            self.untracked + other.untracked,
            self.distinct_dropped + other.distinct_dropped,
        )._bounded()

    def stats(self) -> dict[str, Any]:
        """``_categorical_stats``' dict."""
        ordered = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        total = max(sum(self.counts.values()) + self.untracked, 1)
        top = ordered[:_MAX_CATEGORIES]
        rest = sum(v for _, v in ordered[_MAX_CATEGORIES:]) + self.untracked
        return {
            "type": "categorical",
            "null_rate": float(self.nulls / self.rows) if self.rows else 0.0,
            "frequencies": {k: float(v / total) for k, v in top},
            "other_fraction": float(rest / total),
            "distinct": int(len(self.counts) + self.distinct_dropped),
        }


def _sample_columns(frame: pd.DataFrame, schema: Any) -> dict[str, np.ndarray]:
    """The feature columns as the reference sample stores them (floats; category text or None)."""
    out: dict[str, np.ndarray] = {}
    for col in schema.features:
        if col in schema.categorical:
            out[col] = np.array(
                [None if pd.isna(v) else category_key(v) for v in frame[col].to_numpy(dtype=object)],
                dtype=object,
            )
        else:
            out[col] = numeric_values(frame[col])
    return out


@dataclass
class ReferencePartial:
    """The training rows' reference statistics for one batch, mergeable across batches.

    Attributes:
        rows: training rows seen.
        numeric: per numeric feature, its exact summary.
        categorical: per categorical feature, its counts.
        sample: the rows with the lowest seeded content hash (features only, as the sample file
            stores them), for quantiles, bin edges and the Kolmogorov-Smirnov sample.
    """

    rows: int
    numeric: dict[str, NumericSummary]
    categorical: dict[str, CategoricalSummary]
    sample: HashSample

    @classmethod
    def from_batch(
        cls,
        frame: pd.DataFrame,
        schema: Any,
        keys: np.ndarray,
        *,
        cap: int = QUANTILE_ROWS,
        admit: int | None = None,
    ) -> ReferencePartial:
        """One batch of training rows (raw feature columns) and its rows' sample keys.

        Args:
            frame: the rows.
            schema: the model's TableSchema.
            keys: one uint64 per row, e.g. ``sample_keys(row_keys(frame), seed)`` from
                :mod:`raymlops.evaluate.heldout`.
            cap: rows the sample keeps.
            admit: the highest key the sample takes (:func:`admit_limit`); None: any.
        """
        numeric = {c: NumericSummary.from_values(numeric_values(frame[c])) for c in schema.numeric}
        categorical = {c: CategoricalSummary.from_series(frame[c]) for c in schema.categorical}
        sample = HashSample.from_batch(keys, _sample_columns(frame, schema), cap, admit)
        return cls(len(frame), numeric, categorical, sample)

    def merge(self, other: ReferencePartial) -> ReferencePartial:
        return ReferencePartial(
            self.rows + other.rows,
            {c: s.merge(other.numeric[c]) for c, s in self.numeric.items()},
            {c: s.merge(other.categorical[c]) for c, s in self.categorical.items()},
            self.sample.merge(other.sample),
        )


@dataclass
class PredictionPartial:
    """A model's held-out predictions, summarized for the reference's ``prediction`` entry.

    Attributes:
        task: classification or regression.
        rows: rows scored.
        class_counts: rows per predicted class (classification).
        proba_sums: sum of each class's probability (classification).
        numeric: exact summary of the predicted values (regression).
        sample: the predictions of the rows with the lowest sample keys (regression).
    """

    task: str
    rows: int
    class_counts: np.ndarray | None = None
    proba_sums: np.ndarray | None = None
    numeric: NumericSummary | None = None
    sample: HashSample | None = None

    @classmethod
    def from_batch(
        cls, scores: np.ndarray, task: str, n_classes: int, keys: np.ndarray, *, cap: int = QUANTILE_ROWS
    ) -> PredictionPartial:
        scores = np.asarray(scores)
        if task == "classification":
            k = n_classes
            pred = scores.argmax(axis=1) if len(scores) else np.zeros(0, dtype=int)
            return cls(
                task,
                len(scores),
                np.bincount(pred, minlength=k).astype(np.int64),
                scores.reshape(len(scores), k).astype("float64").sum(axis=0),
            )
        values = scores.astype("float64").reshape(-1)
        return cls(
            task,
            len(values),
            numeric=NumericSummary.from_values(values),
            sample=HashSample.from_batch(keys, {"prediction": values}, cap),
        )

    def merge(self, other: PredictionPartial) -> PredictionPartial:
        if self.task == "classification":
            assert self.class_counts is not None and other.class_counts is not None
            assert self.proba_sums is not None and other.proba_sums is not None
            return PredictionPartial(
                self.task,
                self.rows + other.rows,
                self.class_counts + other.class_counts,
                self.proba_sums + other.proba_sums,
            )
        assert self.numeric is not None and other.numeric is not None
        assert self.sample is not None and other.sample is not None
        return PredictionPartial(
            self.task,
            self.rows + other.rows,
            numeric=self.numeric.merge(other.numeric),
            sample=self.sample.merge(other.sample),
        )

    def stats(self, classes: list[Any] | None, bins: int, sample_size: int) -> dict[str, Any]:
        """``_prediction_stats``' dict."""
        if self.task == "classification":
            assert self.class_counts is not None and self.proba_sums is not None
            labels = [category_key(c) for c in classes or []]
            total = max(int(self.class_counts.sum()), 1)
            return {
                "type": "categorical",
                "rows": int(self.rows),
                "frequencies": {lab: float(self.class_counts[i] / total) for i, lab in enumerate(labels)},
                "mean_probability": {
                    lab: float(self.proba_sums[i] / self.rows) if self.rows else 0.0
                    for i, lab in enumerate(labels)
                },
            }
        assert self.numeric is not None and self.sample is not None
        values = self.sample.columns["prediction"]
        out = self.numeric.stats(values, bins)
        out.update(rows=int(self.rows), sample=[float(f"{v:.7g}") for v in values[:sample_size]])
        return out


def build_reference_from_partials(
    partial: ReferencePartial,
    schema: Any,
    prediction: PredictionPartial,
    *,
    bins: int = 10,
    sample_size: int = 10_000,
    extra: dict[str, Any] | None = None,
    bin_counts_by_feature: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """:func:`build_reference`'s result from merged partials (the rows themselves never gathered).

    Args:
        partial: the training rows' merged :class:`ReferencePartial`.
        schema: the model's TableSchema.
        prediction: the model's merged held-out :class:`PredictionPartial`.
        bins: quantile bins per numeric feature.
        sample_size: rows kept for the Kolmogorov-Smirnov sample (the first of the hash sample).
        extra: more keys for the JSON.
        bin_counts_by_feature: exact counts per bin for numeric features (a second pass with the
            edges this function computes); without them fractions come from the sample.

    Returns:
        the JSON-ready statistics and the sample frame (feature columns only).
    """
    sample = partial.sample
    features: dict[str, Any] = {}
    for col in schema.features:
        if col in schema.categorical:
            features[col] = partial.categorical[col].stats()
        else:
            exact = (bin_counts_by_feature or {}).get(col)
            features[col] = partial.numeric[col].stats(sample.columns[col], bins, exact)
    frame = sample.frame(sample_size)
    reference = {
        "format": FORMAT_VERSION,
        "rows": int(partial.rows),
        "bins": bins,
        "task": schema.task,
        "target": schema.target,
        "features": features,
        "prediction": prediction.stats(schema.classes, bins, sample_size),
        "sample": {"file": SAMPLE_FILE, "rows": int(len(frame))},
        "quantile_rows": int(len(sample.keys)),
        "quantiles_exact": bool(sample.complete),
        **(extra or {}),
    }
    return reference, frame


def reference_partial(
    ds: Any,
    schema: Any,
    *,
    seed: int = 0,
    cap: int = QUANTILE_ROWS,
    batch_size: int = 32_768,
    rows: int | None = None,
) -> ReferencePartial:
    """One Ray Data pass over the training rows (raw columns): their merged :class:`ReferencePartial`.

    Only the partials come back to the driver: counts, and the sample's rows. Given ``rows`` (the
    rows of every pass whose partials will be merged), each batch sends only its share of the
    sample (:func:`admit_limit`), about ``cap`` rows in all instead of up to ``cap`` per batch;
    in the rare pass where that lets too few rows through, the pass runs again without the limit.
    """
    merged = _reference_pass(ds, schema, seed, cap, batch_size, admit_limit(rows, cap))
    if merged is not None and not merged.sample.exact:
        merged = _reference_pass(ds, schema, seed, cap, batch_size, None)
    if merged is None:
        merged = ReferencePartial.from_batch(
            pd.DataFrame({c: pd.Series(dtype="float64") for c in schema.features}),
            schema,
            np.zeros(0, dtype=np.uint64),
            cap=cap,
        )
    return merged


def _reference_pass(
    ds: Any, schema: Any, seed: int, cap: int, batch_size: int, admit: int | None
) -> ReferencePartial | None:
    import pickle

    parts = ds.map_batches(
        _reference_batch,
        batch_format="pandas",
        batch_size=batch_size,
        fn_kwargs={"schema": schema, "seed": seed, "cap": cap, "admit": admit},
    )
    merged: ReferencePartial | None = None
    for row in parts.iter_rows():
        part = pickle.loads(row["partial"])  # noqa: S301 - written by our own tasks
        merged = part if merged is None else merged.merge(part)
    return merged


def exact_bin_counts(
    ds: Any, reference: dict[str, Any], *, batch_size: int = 32_768
) -> dict[str, np.ndarray]:
    """A second pass over the training rows: each numeric feature's exact counts in its reference bins.

    Only needed past :data:`QUANTILE_ROWS` rows (below, the fractions are exact already); pass the
    result to :func:`build_reference_from_partials` as ``bin_counts_by_feature`` with the same
    partials, which gives the same edges again.
    """
    import pickle

    edges = {
        name: list(stats["bin_edges"])
        for name, stats in reference["features"].items()
        if stats["type"] == "numeric"
    }
    parts = ds.map_batches(
        _bin_counts_batch, batch_format="pandas", batch_size=batch_size, fn_kwargs={"edges": edges}
    )
    total = {name: np.zeros(len(e) + 1, dtype=np.int64) for name, e in edges.items()}
    for row in parts.iter_rows():
        for name, counts in pickle.loads(row["counts"]).items():  # noqa: S301 - our own tasks
            total[name] += counts
    return total


def _bin_counts_batch(batch: pd.DataFrame, *, edges: dict[str, list[float]]) -> dict[str, Any]:
    import pickle

    counts = {name: bin_counts(numeric_values(batch[name]), e) for name, e in edges.items() if name in batch}
    return {"counts": np.array([pickle.dumps(counts)], dtype=object)}


def _reference_batch(
    batch: pd.DataFrame, *, schema: Any, seed: int, cap: int, admit: int | None = None
) -> dict[str, Any]:
    import pickle

    from raymlops.evaluate.heldout import row_keys, sample_keys

    columns = [c for c in [*schema.features, schema.target] if c in batch.columns]
    keys = sample_keys(row_keys(batch, columns), seed)
    part = ReferencePartial.from_batch(batch, schema, keys, cap=cap, admit=admit)
    return {"partial": np.array([pickle.dumps(part)], dtype=object)}
