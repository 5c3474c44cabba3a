"""Held-out metrics from mergeable partial results, so the test split is measured where it lies.

Each batch of held-out rows becomes a :class:`MetricsPartial` (counts and sums, never rows); partials
add up in any order and :meth:`MetricsPartial.finalize` turns the total into the same numbers
:func:`raymlops.evaluate.metrics.compute_metrics` computes on whole arrays (equal to scikit-learn's
to ~1e-12 on any data):

* accuracy and F1 macro from the confusion matrix counts (F1 is ``2tp / (2tp + fp + fn)`` per class,
  0 where a class is neither true nor predicted: scikit-learn's ``zero_division=0``);
* log loss from the sum of ``-log p(true class)``, with probabilities normalized per row and clipped
  to ``[1e-15, 1 - eps]`` like ``compute_metrics`` and scikit-learn;
* ROC AUC (binary, or one-vs-rest macro over every class, as ``roc_auc_score(multi_class="ovr")``)
  from the positive and negative counts at each distinct score, which is exact (Mann-Whitney with
  ties counted half, the trapezoid scikit-learn integrates). A class with more than
  :data:`EXACT_AUC_MAX` distinct scores switches to :data:`AUC_BINS` bins evenly spaced in logit
  space (resolution ~2e-4 near 0.5, finer towards 0 and 1); the result then differs from the exact
  one by at most half the share of pairs tied inside a bin, ~1e-5 in practice;
* RMSE, MAE and R2 from sums, the target's variance merged with Chan's formula (no cancellation).

The bootstrap interval is computed the same way: each row gets a Poisson(1) weight per resample,
drawn from a hash of (seed, replicate, row key), so a row weighs the same in a resample whatever
block or batch it arrives in, and the interval does not depend on the block layout. Percentiles
over the resamples are taken as ``bootstrap_interval`` takes them (``np.quantile``, resamples where
the metric is undefined skipped). The Poisson bootstrap is the streaming form of the classical one
(resample sizes vary around n instead of being exactly n); the two agree to sampling noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "AUC_BINS",
    "EXACT_AUC_MAX",
    "INTERVAL_METRICS",
    "AucCounts",
    "BootstrapPartial",
    "MetricsPartial",
    "normalized_proba",
    "poisson_weights",
    "row_keys",
    "sample_keys",
]

EXACT_AUC_MAX = 200_000
AUC_BINS = 1 << 16
_BOOT_AUC_BINS = 512
_LOGIT_RANGE = 28.0
_LOG_EPS = 1e-15
_ONE_MINUS_EPS = 1.0 - float(np.finfo(np.float64).eps)
#: Replicates x rows drawn at once when making bootstrap weights (bounds a batch's memory).
_WEIGHT_CELLS = 1 << 22
INTERVAL_METRICS = ("accuracy", "f1_macro", "log_loss", "roc_auc", "rmse", "mae", "r2")

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


# ---- hashing: row keys and per-row random numbers that do not depend on the block layout -----------


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 that scrambles every bit."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _column_hash(series: pd.Series) -> np.ndarray:
    """One uint64 per value, equal for equal values whatever the batch's dtype inference did.

    Numbers (and booleans) are hashed as float64 so an int column read as float in another file
    hashes the same; everything else as text. Nulls share one hash.
    """
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        values = np.where(values == 0, 0.0, values)  # -0.0 and 0.0 are the same value
        out = pd.util.hash_array(values)
        out[np.isnan(values)] = np.uint64(0x5BD1E995)
        return out
    null = series.isna().to_numpy()
    text = series.astype(str).to_numpy(dtype=object)
    text[null] = "\x00null"
    return pd.util.hash_array(text, categorize=True)


def row_keys(frame: pd.DataFrame, columns: list[str] | None = None) -> np.ndarray:
    """A uint64 key per row from the row's content (the named columns, in sorted name order).

    Equal rows get equal keys, wherever they are read; that is what makes bootstrap weights and
    hash samples independent of how the data is cut into blocks.
    """
    names = sorted(str(c) for c in (columns if columns is not None else frame.columns))
    h = np.full(len(frame), np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
    for name in names:
        tag = pd.util.hash_array(np.array([name], dtype=object))[0]
        with np.errstate(over="ignore"):
            h = _mix(h ^ (_column_hash(frame[name]) + tag))
    return h


def sample_keys(keys: np.ndarray, seed: int) -> np.ndarray:
    """Seeded sort keys for hash samples: the rows with the lowest are a uniform random sample."""
    return _mix(np.asarray(keys, dtype=np.uint64) ^ _stream(seed, 0xFFFFF))


def _stream(seed: int, replicate: int) -> np.uint64:
    base = np.array([(seed & 0xFFFFFFFF) << 20 | (replicate & 0xFFFFF)], dtype=np.uint64)
    return _mix(_mix(base ^ np.uint64(0xD1B54A32D192ED03)))[0]


def _unit(h: np.ndarray) -> np.ndarray:
    """uint64 -> float64 uniform in [0, 1)."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


_FAST_LEVELS = 8
_POISSON_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(24)])


def poisson_weights(keys: np.ndarray, seed: int, replicates: range | list[int]) -> np.ndarray:
    """(len(replicates), n) Poisson(1) bootstrap weights, a pure function of (seed, replicate, key)."""
    keys = np.asarray(keys, dtype=np.uint64)
    out = np.empty((len(replicates), len(keys)), dtype=np.float64)
    for i, b in enumerate(replicates):
        u = _unit(_mix(keys ^ _stream(seed, b)))
        # Inverse CDF by comparisons (several times faster than searchsorted on small tables).
        w = np.zeros(len(u), dtype=np.float64)
        for c in _POISSON_CDF[:_FAST_LEVELS]:
            w += u >= c
        tail = u >= _POISSON_CDF[_FAST_LEVELS - 1]
        if tail.any():
            w[tail] = np.searchsorted(_POISSON_CDF, u[tail], side="right")
        out[i] = w
    return out


# ---- ROC AUC from counts ---------------------------------------------------------------------------


def _logit_bins(scores: np.ndarray, bins: int) -> np.ndarray:
    s = np.clip(np.asarray(scores, dtype=np.float64), 1e-300, 1.0)
    with np.errstate(divide="ignore"):
        t = np.log(s) - np.log1p(-s)
    t = np.nan_to_num(t, nan=0.0, posinf=_LOGIT_RANGE, neginf=-_LOGIT_RANGE)
    idx = np.floor((t + _LOGIT_RANGE) / (2 * _LOGIT_RANGE) * bins).astype(np.int64)
    return np.clip(idx, 0, bins - 1)


def _auc_from_ordered(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """AUC from counts ordered by increasing score: ties (same score or bin) count one half.

    Integer counts are summed exactly (int64) before the single division, so the result is the
    correctly rounded Mann-Whitney statistic.
    """
    if pos.dtype.kind in "iu":
        p_total, n_total = int(pos.sum()), int(neg.sum())
        if p_total == 0 or n_total == 0:
            return None
        pos64, neg64 = pos.astype(np.int64), neg.astype(np.int64)
        below = np.cumsum(neg64) - neg64
        twice = 2 * int(np.dot(pos64, below)) + int(np.dot(pos64, neg64))  # exact below ~4e9 rows
        return float(twice / (2 * p_total * n_total))
    p_w, n_w = float(pos.sum()), float(neg.sum())
    if p_w <= 0 or n_w <= 0:
        return None
    below_w = np.cumsum(neg) - neg
    return float((np.dot(pos, below_w) + 0.5 * np.dot(pos, neg)) / (p_w * n_w))


@dataclass
class AucCounts:
    """Positive and negative counts of one class at each distinct score (or logit bin).

    Attributes:
        values: the distinct scores, increasing (exact form), or None once binned.
        pos: rows of the class at each score / bin.
        neg: rows of other classes at each score / bin.
    """

    values: np.ndarray | None
    pos: np.ndarray
    neg: np.ndarray

    @classmethod
    def from_scores(cls, scores: np.ndarray, positive: np.ndarray) -> AucCounts:
        values, inverse = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
        pos = np.bincount(inverse, weights=positive, minlength=len(values)).astype(np.int64)
        total = np.bincount(inverse, minlength=len(values)).astype(np.int64)
        out = cls(values, pos, total - pos)
        return out._bounded()

    @property
    def binned(self) -> bool:
        return self.values is None

    def _bounded(self) -> AucCounts:
        if self.values is not None and len(self.values) > EXACT_AUC_MAX:
            return self.to_bins()
        return self

    def to_bins(self) -> AucCounts:
        if self.values is None:
            return self
        idx = _logit_bins(self.values, AUC_BINS)
        pos = np.bincount(idx, weights=self.pos, minlength=AUC_BINS).astype(np.int64)
        neg = np.bincount(idx, weights=self.neg, minlength=AUC_BINS).astype(np.int64)
        return AucCounts(None, pos, neg)

    def merge(self, other: AucCounts) -> AucCounts:
        if self.values is None or other.values is None:
            a, b = self.to_bins(), other.to_bins()
            return AucCounts(None, a.pos + b.pos, a.neg + b.neg)
        values, inverse = np.unique(np.concatenate([self.values, other.values]), return_inverse=True)
        pos = np.bincount(inverse, weights=np.concatenate([self.pos, other.pos]), minlength=len(values))
        neg = np.bincount(inverse, weights=np.concatenate([self.neg, other.neg]), minlength=len(values))
        return AucCounts(values, pos.astype(np.int64), neg.astype(np.int64))._bounded()

    def auc(self) -> float | None:
        return _auc_from_ordered(self.pos, self.neg)


# ---- probabilities as compute_metrics sees them ----------------------------------------------------


def normalized_proba(scores: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to one, exactly as ``compute_metrics`` does before any metric."""
    proba = np.asarray(scores, dtype=float)
    sums = proba.sum(axis=1, keepdims=True)
    return proba / np.where(sums > 0, sums, 1.0)


def _auc_scores(proba: np.ndarray) -> np.ndarray:
    """The (n, c) scores ROC AUC ranks: class 1's probability (binary) or renormalized rows (ovr)."""
    if proba.shape[1] == 2:
        return proba[:, 1:2]
    return proba / np.clip(proba.sum(axis=1, keepdims=True), 1e-12, None)


def _auc_classes(k: int) -> list[int]:
    return [1] if k == 2 else list(range(k))


def _true_log_loss(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = proba[np.arange(len(y)), y] if len(y) else np.zeros(0)
    return -np.log(np.clip(np.clip(p, _LOG_EPS, 1.0), _LOG_EPS, _ONE_MINUS_EPS))


# ---- Chan's merge of (count, mean, M2) ---------------------------------------------------------


def _chan(
    na: np.ndarray | float, ma: np.ndarray | float, qa: np.ndarray | float, nb: Any, mb: Any, qb: Any
) -> tuple[Any, Any, Any]:
    n = na + nb
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = mb - ma
        frac = np.where(n > 0, nb / np.where(n > 0, n, 1), 0.0)
        mean = ma + delta * frac
        m2 = qa + qb + delta * delta * na * frac
    return n, mean, m2


def _weighted_moments(w: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per replicate (rows of ``w``): total weight, weighted mean and weighted M2 of ``y``."""
    total = w.sum(axis=1)
    safe = np.where(total > 0, total, 1.0)
    mean = (w @ y) / safe
    m2 = np.einsum("bi,bi->b", w, (y[None, :] - mean[:, None]) ** 2)
    return total, np.where(total > 0, mean, 0.0), m2


# ---- bootstrap -----------------------------------------------------------------------------------


@dataclass
class BootstrapPartial:
    """Per-resample statistics of one metric over a batch, mergeable by addition (or Chan's merge).

    Attributes:
        metric: the metric the interval is for (one of :data:`INTERVAL_METRICS`).
        task: classification or regression.
        n_classes: k (classification).
        rounds: resamples B.
        seed: the seed the weights are drawn from.
        stats: the per-resample statistics: (B, k, k) weighted confusion matrices (accuracy, F1),
            (B, 2) loss and weight sums (log loss), (B, c, 2, bins) weighted score histograms
            (ROC AUC), (B, 5) weight, squared and absolute error sums, target mean and M2 (regression).
    """

    metric: str
    task: str
    n_classes: int
    rounds: int
    seed: int
    stats: np.ndarray

    @classmethod
    def empty(cls, metric: str, task: str, n_classes: int, rounds: int, seed: int) -> BootstrapPartial:
        k = n_classes
        if task == "regression":
            shape: tuple[int, ...] = (rounds, 5)
        elif metric in ("accuracy", "f1_macro"):
            shape = (rounds, k, k)
        elif metric == "log_loss":
            shape = (rounds, 2)
        else:
            shape = (rounds, len(_auc_classes(k)), 2, _boot_bins(rounds, k))
        return cls(metric, task, n_classes, rounds, seed, np.zeros(shape))

    @classmethod
    def from_batch(
        cls,
        y: np.ndarray,
        scores: np.ndarray,
        keys: np.ndarray,
        *,
        metric: str,
        task: str,
        n_classes: int,
        rounds: int,
        seed: int,
    ) -> BootstrapPartial:
        """The resample statistics of a batch; ``scores`` as given to :meth:`MetricsPartial.from_batch`."""
        out = cls.empty(metric, task, n_classes, rounds, seed)
        n = len(y)
        if n == 0:
            return out
        step = max(1, _WEIGHT_CELLS // max(n, 1))
        for start in range(0, rounds, step):
            reps = range(start, min(rounds, start + step))
            w = poisson_weights(keys, seed, reps)
            out.stats[start : reps.stop] = out._stats(w, y, scores)
        return out

    def _stats(self, w: np.ndarray, y: np.ndarray, scores: np.ndarray) -> np.ndarray:
        k, b = self.n_classes, w.shape[0]
        if self.task == "regression":
            pred = np.asarray(scores, dtype=np.float64).reshape(-1)
            yf = np.asarray(y, dtype=np.float64)
            err = pred - yf
            total, mean, m2 = _weighted_moments(w, yf)
            return np.stack([total, w @ (err * err), w @ np.abs(err), mean, m2], axis=1)
        proba = normalized_proba(scores)
        yi = np.asarray(y, dtype=np.int64)
        if self.metric in ("accuracy", "f1_macro"):
            cell = yi * k + proba.argmax(axis=1)
            flat = (np.arange(b)[:, None] * (k * k) + cell[None, :]).ravel()
            return np.bincount(flat, weights=w.ravel(), minlength=b * k * k).reshape(b, k, k)
        if self.metric == "log_loss":
            loss = _true_log_loss(proba, yi)
            return np.stack([w @ loss, w.sum(axis=1)], axis=1)
        bins = self.stats.shape[-1]
        classes = _auc_classes(k)
        auc_scores = _auc_scores(proba)
        out = np.zeros((b, len(classes), 2, bins))
        for j, c in enumerate(classes):
            col = auc_scores[:, 0] if k == 2 else auc_scores[:, c]
            idx = _logit_bins(col, bins) + bins * (yi == c)  # neg first, then pos
            flat = (np.arange(b)[:, None] * (2 * bins) + idx[None, :]).ravel()
            out[:, j] = np.bincount(flat, weights=w.ravel(), minlength=b * 2 * bins).reshape(b, 2, bins)
        return out

    def merge(self, other: BootstrapPartial) -> BootstrapPartial:
        if (self.metric, self.rounds, self.seed, self.stats.shape) != (
            other.metric,
            other.rounds,
            other.seed,
            other.stats.shape,
        ):
            raise ValueError("bootstrap partials of different metrics, rounds or seeds cannot be merged")
        if self.task != "regression":
            return BootstrapPartial(
                self.metric, self.task, self.n_classes, self.rounds, self.seed, self.stats + other.stats
            )
        a, b = self.stats, other.stats
        n, mean, m2 = _chan(a[:, 0], a[:, 3], a[:, 4], b[:, 0], b[:, 3], b[:, 4])
        stats = np.stack([n, a[:, 1] + b[:, 1], a[:, 2] + b[:, 2], mean, m2], axis=1)
        return BootstrapPartial(self.metric, self.task, self.n_classes, self.rounds, self.seed, stats)

    def values(self) -> list[float]:
        """The metric on every resample where it is defined."""
        out: list[float] = []
        for r in range(self.rounds):
            value = self._value(self.stats[r])
            if value is not None and math.isfinite(value):
                out.append(value)
        return out

    def _value(self, s: np.ndarray) -> float | None:
        if self.task == "regression":
            total, sse, sae, _, m2 = (float(v) for v in s)
            if total <= 0:
                return None
            return _regression_values(total, sse, sae, m2).get(self.metric)
        if self.metric in ("accuracy", "f1_macro"):
            if s.sum() <= 0:
                return None
            return _confusion_values(s)[self.metric]
        if self.metric == "log_loss":
            return float(s[0] / s[1]) if s[1] > 0 else None
        neg, pos = s[:, 0, :], s[:, 1, :]
        if self.n_classes > 2 and (pos.sum(axis=1) <= 0).any():
            return None  # compute_metrics reports no ROC AUC when a class is absent
        aucs = [_auc_from_ordered(pos[j], neg[j]) for j in range(len(pos))]
        if any(a is None for a in aucs):
            return None
        return float(np.mean([a for a in aucs if a is not None]))

    def interval(self, level: float = 0.95) -> dict[str, Any]:
        """The percentile interval, shaped like :func:`~raymlops.evaluate.metrics.bootstrap_interval`."""
        values = self.values()
        if not values:
            return {"metric": self.metric, "low": None, "high": None, "rounds": 0}
        alpha = (1 - level) / 2
        return {
            "metric": self.metric,
            "low": float(np.quantile(values, alpha)),
            "high": float(np.quantile(values, 1 - alpha)),
            "level": level,
            "rounds": len(values),
            "method": "poisson",
        }


def _boot_bins(rounds: int, k: int) -> int:
    """Histogram bins per resample for a bootstrapped ROC AUC, fewer when B x classes is large."""
    cells = max(1, rounds * len(_auc_classes(k)) * 2)
    return int(max(32, min(_BOOT_AUC_BINS, (1 << 23) // cells)))


# ---- finishing formulas shared by the metrics and the bootstrap ------------------------------------


def _confusion_values(cm: np.ndarray) -> dict[str, float]:
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # (tp + fp) + (tp + fn)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"accuracy": float(tp.sum() / total), "f1_macro": float(np.mean(f1))}


def _regression_values(n: float, sse: float, sae: float, m2: float) -> dict[str, float]:
    # scikit-learn's force_finite: perfect predictions of a constant target are 1, anything else 0.
    r2 = 1.0 - sse / m2 if m2 != 0 else 1.0 if sse == 0 else 0.0
    return {"rmse": float(math.sqrt(sse / n)), "mae": float(sae / n), "r2": float(r2)}


# ---- the held-out metrics ------------------------------------------------------------------------


@dataclass
class MetricsPartial:
    """Counts and sums of one batch of held-out rows, for one model.

    Build one per batch with :meth:`from_batch`, add them with :meth:`merge` (in any order), and read
    the metrics with :meth:`finalize`, the confusion matrix with :meth:`confusion_matrix` and the
    bootstrap interval with :meth:`interval`.

    Attributes:
        task: classification or regression.
        n_classes: k (classification), 0 for regression.
        rows: rows measured.
        confusion: (k, k) counts, true class by row, predicted class by column.
        loss_sum: the sum of ``-log p(true class)``.
        auc: per ranked class (class 1 for binary, every class for more), score counts.
        sse, sae: sums of squared and absolute errors (regression).
        y_mean, y_m2: the target's mean and sum of squared deviations (regression, for R2).
        bootstrap: the resample statistics of the interval's metric, when asked for.
    """

    task: str
    n_classes: int = 0
    rows: int = 0
    confusion: np.ndarray | None = None
    loss_sum: float = 0.0
    auc: list[AucCounts] = field(default_factory=list)
    sse: float = 0.0
    sae: float = 0.0
    y_mean: float = 0.0
    y_m2: float = 0.0
    bootstrap: BootstrapPartial | None = None

    @classmethod
    def from_batch(
        cls,
        y_true_idx: np.ndarray,
        proba_or_pred: np.ndarray,
        task: str,
        n_classes: int = 0,
        row_keys: np.ndarray | None = None,
        *,
        interval_metric: str | None = None,
        rounds: int = 200,
        seed: int = 0,
    ) -> MetricsPartial:
        """The partial statistics of one batch.

        Args:
            y_true_idx: class indices 0..k-1 (classification) or target values (regression).
            proba_or_pred: (n, k) class probabilities, or (n,) predictions.
            task: "classification" or "regression".
            n_classes: k (classification).
            row_keys: one uint64 key per row (see :func:`row_keys`); needed for the interval.
            interval_metric: the metric to bootstrap (None: no interval).
            rounds: bootstrap resamples.
            seed: the bootstrap's seed.
        """
        y = np.asarray(y_true_idx)
        n = len(y)
        boot = None
        if interval_metric is not None:
            if row_keys is None:
                raise ValueError("the bootstrap interval needs row_keys (one uint64 per row)")
            if interval_metric not in INTERVAL_METRICS:
                raise ValueError(f"no bootstrap interval for metric {interval_metric!r}")
            boot = BootstrapPartial.from_batch(
                y,
                proba_or_pred,
                np.asarray(row_keys, dtype=np.uint64),
                metric=interval_metric,
                task=task,
                n_classes=n_classes,
                rounds=rounds,
                seed=seed,
            )
        if task == "regression":
            pred = np.asarray(proba_or_pred, dtype=np.float64).reshape(-1)
            yf = y.astype(np.float64)
            err = yf - pred
            mean = float(yf.mean()) if n else 0.0
            return cls(
                task,
                0,
                n,
                sse=float(np.dot(err, err)),
                sae=float(np.abs(err).sum()),
                y_mean=mean,
                y_m2=float(np.square(yf - mean).sum()) if n else 0.0,
                bootstrap=boot,
            )
        k = int(n_classes or np.asarray(proba_or_pred).shape[1])
        proba = normalized_proba(np.asarray(proba_or_pred).reshape(n, -1))
        yi = y.astype(np.int64)
        pred_idx = proba.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
        cm = np.bincount(yi * k + pred_idx, minlength=k * k).reshape(k, k).astype(np.int64)
        auc_scores = _auc_scores(proba) if n else np.zeros((0, k))
        auc = [
            AucCounts.from_scores(auc_scores[:, 0] if k == 2 else auc_scores[:, c], (yi == c).astype(float))
            for c in _auc_classes(k)
        ]
        return cls(
            task,
            k,
            n,
            confusion=cm,
            loss_sum=float(_true_log_loss(proba, yi).sum()),
            auc=auc,
            bootstrap=boot,
        )

    def merge(self, other: MetricsPartial) -> MetricsPartial:
        """The statistics of both batches together."""
        if (self.task, self.n_classes) != (other.task, other.n_classes):
            raise ValueError("metrics partials of different tasks or class counts cannot be merged")
        boot = self.bootstrap or other.bootstrap
        if self.bootstrap is not None and other.bootstrap is not None:
            boot = self.bootstrap.merge(other.bootstrap)
        if self.task == "regression":
            n, mean, m2 = _chan(self.rows, self.y_mean, self.y_m2, other.rows, other.y_mean, other.y_m2)
            return MetricsPartial(
                self.task,
                0,
                int(n),
                sse=self.sse + other.sse,
                sae=self.sae + other.sae,
                y_mean=float(mean),
                y_m2=float(m2),
                bootstrap=boot,
            )
        assert self.confusion is not None and other.confusion is not None
        return MetricsPartial(
            self.task,
            self.n_classes,
            self.rows + other.rows,
            confusion=self.confusion + other.confusion,
            loss_sum=self.loss_sum + other.loss_sum,
            auc=[a.merge(b) for a, b in zip(self.auc, other.auc, strict=True)],
            bootstrap=boot,
        )

    def finalize(self) -> dict[str, float]:
        """The held-out metrics, with the names ``compute_metrics`` gives them.

        Raises:
            ValueError: no rows were measured.
        """
        if self.rows == 0:
            raise ValueError("no held-out rows were measured")
        if self.task == "regression":
            return _regression_values(self.rows, self.sse, self.sae, self.y_m2)
        assert self.confusion is not None
        out = _confusion_values(self.confusion)
        out["log_loss"] = float(self.loss_sum / self.rows)
        k = self.n_classes
        if k >= 2 and bool((self.confusion.sum(axis=1) > 0).all()):
            aucs = [a.auc() for a in self.auc]
            if all(a is not None for a in aucs):
                out["roc_auc"] = float(np.mean([a for a in aucs if a is not None]))
        # Same key order as compute_metrics: accuracy, f1_macro, log_loss, roc_auc.
        return {key: out[key] for key in ("accuracy", "f1_macro", "log_loss", "roc_auc") if key in out}

    def confusion_matrix(self) -> list[list[int]]:
        """The (k, k) confusion matrix as ``confusion`` returns it (true rows, predicted columns)."""
        if self.confusion is None:
            raise ValueError("a regression model has no confusion matrix")
        return self.confusion.astype(int).tolist()

    @property
    def auc_exact(self) -> bool:
        """Whether ROC AUC came from exact score counts (False: from logit bins)."""
        return not any(a.binned for a in self.auc)

    def interval(self, level: float = 0.95) -> dict[str, Any]:
        """The bootstrap interval of the metric given to :meth:`from_batch`."""
        if self.bootstrap is None:
            raise ValueError("no interval was asked for: pass interval_metric to from_batch")
        return self.bootstrap.interval(level)
