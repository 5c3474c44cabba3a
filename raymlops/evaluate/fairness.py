"""Fairness on the held-out split: per-group metrics and the two group-difference measures.

The sensitive column is measured whether or not the model used it as a feature: leaving a column
out of the features does not make a model fair (other columns can stand in for it), so the only
honest check is to look at outcomes per group.

Definitions follow fairlearn's, so numbers can be compared with it:

* demographic parity difference: largest minus smallest selection rate (share of rows predicted
  positive) across groups;
* equalized odds difference: the larger of the true-positive-rate gap and the false-positive-rate
  gap across groups.

For more than two classes each class is taken in turn as "positive" (one vs rest) and the worst
class is reported, so a limit holds for every class. For regression neither difference is defined;
per-group errors and the gap in mean prediction are reported instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MISSING_GROUP", "FairnessPartial", "fairness_report", "group_labels"]

MISSING_GROUP = "(missing)"
_MAX_GROUPS = 20


def group_labels(values: pd.Series | np.ndarray, *, max_groups: int = _MAX_GROUPS) -> np.ndarray:
    """Group names for each row: the value itself, or a quartile bin for a many-valued number.

    A continuous sensitive column (age, say) would otherwise make one group per value, each too small
    to measure anything.
    """
    series = pd.Series(values).reset_index(drop=True)
    null = series.isna().to_numpy()
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if numeric and series.nunique(dropna=True) > max_groups:
        as_float = series.astype("float64")
        edges = np.unique(np.nanquantile(as_float.to_numpy(), [0, 0.25, 0.5, 0.75, 1]))
        idx = np.clip(np.searchsorted(edges, as_float.to_numpy(), side="right") - 1, 0, len(edges) - 2)
        names = np.array(
            [f"[{edges[i]:.4g}, {edges[i + 1]:.4g}]" for i in range(len(edges) - 1)], dtype=object
        )
        out = names[idx]
    else:
        out = np.array([str(v) for v in series.to_numpy(dtype=object)], dtype=object)
    out[null] = MISSING_GROUP
    return out


def _rate(mask: np.ndarray, where: np.ndarray) -> float | None:
    denom = int(where.sum())
    return float((mask & where).sum() / denom) if denom else None


def _spread(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(max(present) - min(present)) if len(present) >= 2 else None


def fairness_report(
    sensitive: pd.Series | np.ndarray,
    y_true: np.ndarray,
    scores: np.ndarray,
    task: str,
    classes: list[Any] | None = None,
    *,
    column: str = "sensitive",
    min_group_size: int = 10,
) -> dict[str, Any]:
    """Per-group metrics and the group differences for one model on the held-out rows.

    Args:
        sensitive: the sensitive column's raw values, one per held-out row.
        y_true: class indices (classification) or targets (regression).
        scores: (n, k) class probabilities, or (n,) predictions.
        task: "classification" or "regression".
        classes: the class labels, index-aligned with the columns of ``scores``.
        column: the sensitive column's name, for messages.
        min_group_size: groups with fewer held-out rows are listed but left out of the differences,
            because a rate measured on a handful of rows is noise, not evidence.

    Returns:
        ``{"sensitive", "groups": [...], "demographic_parity_difference",
        "equalized_odds_difference", ...}``; differences are None when they are not defined.
    """
    groups = group_labels(sensitive)
    y_true = np.asarray(y_true)
    names = sorted(set(groups.tolist()), key=str)
    counted = [g for g in names if int((groups == g).sum()) >= min_group_size]
    small = [g for g in names if g not in counted]
    out: dict[str, Any] = {
        "sensitive": column,
        "min_group_size": min_group_size,
        "groups": [],
        "small_groups": small,
    }
    if task == "regression":
        pred = np.asarray(scores, dtype=float).reshape(-1)
        means = []
        for g in names:
            m = groups == g
            err = pred[m] - y_true[m].astype(float)
            row = {
                "group": g,
                "rows": int(m.sum()),
                "mean_prediction": float(pred[m].mean()),
                "mean_target": float(y_true[m].astype(float).mean()),
                "rmse": float(np.sqrt(np.mean(err**2))),
                "mae": float(np.mean(np.abs(err))),
            }
            out["groups"].append(row)
            if g in counted:
                means.append(row["mean_prediction"])
        out["mean_prediction_difference"] = _spread(means)
        out["demographic_parity_difference"] = None
        out["equalized_odds_difference"] = None
        out["note"] = "demographic parity and equalized odds are defined for classification only"
        return out

    proba = np.asarray(scores, dtype=float)
    k = proba.shape[1]
    pred = proba.argmax(axis=1)
    labels = [str(c) for c in (classes or range(k))]
    # Binary: the second class (sorted labels: 1, True, "yes"...) is "positive". More classes: each in turn.
    positives = [1] if k == 2 else list(range(k))
    worst_dp: tuple[float, str] | None = None
    worst_eo: tuple[float, str] | None = None
    per_class: dict[str, dict[str, float | None]] = {}
    for pos in positives:
        sel, tpr, fpr = [], [], []
        for g in counted:
            m = groups == g
            sel.append(_rate(pred == pos, m))
            tpr.append(_rate(pred == pos, m & (y_true == pos)))
            fpr.append(_rate(pred == pos, m & (y_true != pos)))
        dp = _spread(sel)
        gaps = [v for v in (_spread(tpr), _spread(fpr)) if v is not None]
        eo = max(gaps) if gaps else None
        per_class[labels[pos]] = {"demographic_parity_difference": dp, "equalized_odds_difference": eo}
        if dp is not None and (worst_dp is None or dp > worst_dp[0]):
            worst_dp = (dp, labels[pos])
        if eo is not None and (worst_eo is None or eo > worst_eo[0]):
            worst_eo = (eo, labels[pos])
    for g in names:
        m = groups == g
        entry: dict[str, Any] = {
            "group": g,
            "rows": int(m.sum()),
            "accuracy": float((pred[m] == y_true[m]).mean()),
        }
        if k == 2:
            entry["selection_rate"] = _rate(pred == 1, m)
            entry["positive_rate"] = _rate(y_true == 1, m)
            entry["true_positive_rate"] = _rate(pred == 1, m & (y_true == 1))
            entry["false_positive_rate"] = _rate(pred == 1, m & (y_true != 1))
        else:
            entry["selection_rates"] = {labels[c]: _rate(pred == c, m) for c in range(k)}
        out["groups"].append(entry)
    return _differences(out, labels, k, worst_dp, worst_eo, per_class, len(counted), column, min_group_size)


def _differences(
    out: dict[str, Any],
    labels: list[Any],
    k: int,
    worst_dp: Any,
    worst_eo: Any,
    per_class: Any,
    n_counted: int,
    column: str,
    min_group_size: int,
) -> dict[str, Any]:
    """The group differences part of the report, shared by the in-memory and the merged forms."""
    out["positive_class"] = labels[1] if k == 2 else "each class in turn (worst reported)"
    out["demographic_parity_difference"] = worst_dp[0] if worst_dp else None
    out["equalized_odds_difference"] = worst_eo[0] if worst_eo else None
    if k > 2:
        out["per_class"] = per_class
        out["worst_class"] = {
            "demographic_parity_difference": worst_dp[1] if worst_dp else None,
            "equalized_odds_difference": worst_eo[1] if worst_eo else None,
        }
    if n_counted < 2:
        out["note"] = (
            f"fewer than two groups of {column!r} have {min_group_size}+ held-out rows: "
            "differences are undefined"
        )
    return out


# ---- the same report from per-group counts merged across batches -----------------------------------

#: Distinct values of a numeric sensitive column kept exactly; beyond, its quartile bins are found
#: from values rounded to 4 significant digits (the precision the bin names are printed with).
GROUP_VALUES_MAX = 50_000


def _round_sig(values: np.ndarray, digits: int = 4) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros_like(v)
    nz = np.isfinite(v) & (v != 0)
    scale = 10.0 ** (np.floor(np.log10(np.abs(v[nz]))) - (digits - 1))
    out[nz] = np.round(v[nz] / scale) * scale
    return out


def _row_stats(y_true: np.ndarray, scores: np.ndarray, task: str, k: int) -> np.ndarray:
    """Per row, the quantities a group's numbers are sums of (see :class:`FairnessPartial`)."""
    n = len(y_true)
    if task == "regression":
        pred = np.asarray(scores, dtype=float).reshape(-1)
        y = np.asarray(y_true).astype(float)
        err = pred - y
        return np.stack([np.ones(n), pred, y, err**2, np.abs(err)], axis=1)
    y = np.asarray(y_true).astype(np.int64)
    pred = np.asarray(scores, dtype=float).reshape(n, -1).argmax(axis=1)
    out = np.zeros((n, 2 + 3 * k))
    rows = np.arange(n)
    out[:, 0] = 1
    out[:, 1] = pred == y
    out[rows, 2 + pred] = 1
    out[rows[pred == y], 2 + k + pred[pred == y]] = 1
    out[rows, 2 + 2 * k + y] = 1
    return out


def _sum_by(codes: np.ndarray, stats: np.ndarray, groups: int) -> np.ndarray:
    out = np.zeros((groups, stats.shape[1]))
    np.add.at(out, codes, stats)
    return out


@dataclass
class _Table:
    """Summed row statistics per key: ``names[i]`` (and its number ``values[i]``) -> ``stats[i]``."""

    names: np.ndarray
    values: np.ndarray
    stats: np.ndarray

    @classmethod
    def build(cls, names: np.ndarray, values: np.ndarray, stats: np.ndarray) -> _Table:
        codes, uniques = pd.factorize(names, sort=False)
        first = np.zeros(len(uniques), dtype=np.int64)
        first[codes[::-1]] = np.arange(len(codes))[::-1]
        return cls(
            np.asarray(uniques, dtype=object), np.asarray(values)[first], _sum_by(codes, stats, len(uniques))
        )

    def merge(self, other: _Table) -> _Table:
        return _Table.build(
            np.concatenate([self.names, other.names]),
            np.concatenate([self.values, other.values]),
            np.concatenate([self.stats, other.stats]),
        )


@dataclass
class FairnessPartial:
    """Per-group counts of one batch of held-out rows, mergeable across batches.

    :meth:`finalize` gives what :func:`fairness_report` gives on the whole arrays: groups are the
    sensitive column's values, or its quartile bins when it is a number with more than 20 values
    (the bins found from the per-value counts, so they are the same as on the whole column).

    Attributes:
        task: classification or regression.
        n_classes: k (classification).
        numeric: every batch held the sensitive column as numbers (not booleans).
        exact: per distinct value (its text, and its number when numeric); None once a numeric column
            passed :data:`GROUP_VALUES_MAX` values.
        rounded: per value rounded to 4 significant digits (numeric columns only).
        missing: the summed statistics of rows whose sensitive value is missing.
    """

    task: str
    n_classes: int
    numeric: bool
    exact: _Table | None
    rounded: _Table | None
    missing: np.ndarray

    @classmethod
    def from_batch(
        cls,
        sensitive: pd.Series | np.ndarray,
        y_true: np.ndarray,
        scores: np.ndarray,
        task: str,
        n_classes: int = 0,
    ) -> FairnessPartial:
        """The per-group sums of one batch (arguments as :func:`fairness_report`'s, row-aligned)."""
        series = pd.Series(sensitive).reset_index(drop=True)
        k = int(
            n_classes or (np.asarray(scores).reshape(len(series), -1).shape[1] if task != "regression" else 0)
        )
        stats = _row_stats(np.asarray(y_true), np.asarray(scores), task, k)
        null = series.isna().to_numpy()
        numeric = bool(pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series))
        present = series[~null]
        codes, uniques = pd.factorize(present, sort=False)
        names = np.array([str(v) for v in np.asarray(uniques, dtype=object)], dtype=object)
        values = np.asarray(uniques, dtype=np.float64) if numeric else np.full(len(uniques), np.nan)
        exact = _Table(names, values, _sum_by(codes, stats[~null], len(uniques)))
        exact = _Table.build(exact.names, exact.values, exact.stats)  # "1" twice (1 and "1") is one name
        rounded = None
        if numeric:
            r = _round_sig(values)
            rounded = _Table.build(r, r, exact.stats)
        return cls(task, k, numeric, exact, rounded, stats[null].sum(axis=0)).bounded()

    def bounded(self) -> FairnessPartial:
        if self.numeric and self.exact is not None and len(self.exact.names) > GROUP_VALUES_MAX:
            self.exact = None
        return self

    def merge(self, other: FairnessPartial) -> FairnessPartial:
        if (self.task, self.n_classes) != (other.task, other.n_classes):
            raise ValueError("fairness partials of different tasks or class counts cannot be merged")
        exact = self.exact.merge(other.exact) if self.exact is not None and other.exact is not None else None
        rounded = (
            self.rounded.merge(other.rounded)
            if self.rounded is not None and other.rounded is not None
            else None
        )
        return FairnessPartial(
            self.task,
            self.n_classes,
            self.numeric and other.numeric,
            exact,
            rounded,
            self.missing + other.missing,
        ).bounded()

    def _groups(self, max_groups: int) -> tuple[list[str], np.ndarray]:
        """The group names and their summed statistics, as :func:`group_labels` would group."""
        table = self.exact
        many = table is None or len(table.names) > max_groups
        if self.numeric and many:
            table = table if table is not None else self.rounded
            assert table is not None
            order = np.argsort(table.values, kind="stable")
            values, stats = table.values[order], table.stats[order]
            edges = np.unique(_quantiles_from_counts(values, stats[:, 0], [0, 0.25, 0.5, 0.75, 1]))
            idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, max(len(edges) - 2, 0))
            if len(edges) < 2:
                bin_names = np.array([f"[{edges[0]:.4g}, {edges[0]:.4g}]"] * len(values), dtype=object)
            else:
                labels = [f"[{edges[i]:.4g}, {edges[i + 1]:.4g}]" for i in range(len(edges) - 1)]
                bin_names = np.array(labels, dtype=object)[idx]
            table = _Table.build(bin_names, np.zeros(len(bin_names)), stats)
        elif table is None:  # mixed column types past the cap: group by the rounded numbers
            assert self.rounded is not None
            table = _Table.build(
                np.array([str(v) for v in self.rounded.values], dtype=object),
                self.rounded.values,
                self.rounded.stats,
            )
        names = [str(n) for n in table.names]
        stats = table.stats
        if self.missing[0] > 0:
            if MISSING_GROUP in names:
                i = names.index(MISSING_GROUP)
                stats = stats.copy()
                stats[i] += self.missing
            else:
                names.append(MISSING_GROUP)
                stats = np.vstack([stats, self.missing[None, :]])
        by_name = dict(zip(names, stats, strict=True))
        ordered = sorted(by_name, key=str)
        return ordered, np.array([by_name[g] for g in ordered]).reshape(len(ordered), -1)

    def finalize(
        self,
        classes: list[Any] | None = None,
        *,
        column: str = "sensitive",
        min_group_size: int = 10,
        max_groups: int = _MAX_GROUPS,
    ) -> dict[str, Any]:
        """The fairness report, shaped exactly like :func:`fairness_report`'s."""
        names, stats = self._groups(max_groups)
        rows = {g: int(round(s[0])) for g, s in zip(names, stats, strict=True)}
        counted = [g for g in names if rows[g] >= min_group_size]
        small = [g for g in names if g not in counted]
        out: dict[str, Any] = {
            "sensitive": column,
            "min_group_size": min_group_size,
            "groups": [],
            "small_groups": small,
        }
        by_name = dict(zip(names, stats, strict=True))
        if self.task == "regression":
            return _regression_report(out, names, counted, by_name, rows)
        return _classification_report(
            out, names, counted, by_name, rows, self.n_classes, classes, column, min_group_size
        )


def _quantiles_from_counts(values: np.ndarray, counts: np.ndarray, qs: list[float]) -> np.ndarray:
    """``np.quantile`` (linear) of the column that holds each sorted ``values[i]`` ``counts[i]`` times."""
    counts = np.asarray(np.round(counts), dtype=np.int64)
    keep = counts > 0
    values, counts = values[keep], counts[keep]
    n = int(counts.sum())
    ends = np.cumsum(counts)  # rank r (0-based) lies in the first i with ends[i] > r

    def at(rank: int) -> float:
        return float(values[int(np.searchsorted(ends, rank, side="right"))])

    out = []
    for q in qs:
        h = (n - 1) * q
        lo = int(np.floor(h))
        t = h - lo
        a = at(lo)
        b = at(min(lo + 1, n - 1))
        diff = b - a
        out.append(b - diff * (1 - t) if t >= 0.5 else a + diff * t)  # numpy's _lerp
    return np.asarray(out)


def _regression_report(
    out: dict[str, Any],
    names: list[str],
    counted: list[str],
    by_name: dict[str, np.ndarray],
    rows: dict[str, int],
) -> dict[str, Any]:
    means: list[float | None] = []
    for g in names:
        s = by_name[g]
        n = s[0]
        row: dict[str, Any] = {
            "group": g,
            "rows": rows[g],
            "mean_prediction": float(s[1] / n),
            "mean_target": float(s[2] / n),
            "rmse": float(np.sqrt(s[3] / n)),
            "mae": float(s[4] / n),
        }
        out["groups"].append(row)
        if g in counted:
            means.append(row["mean_prediction"])
    out["mean_prediction_difference"] = _spread(means)
    out["demographic_parity_difference"] = None
    out["equalized_odds_difference"] = None
    out["note"] = "demographic parity and equalized odds are defined for classification only"
    return out


def _ratio(num: float, denom: float) -> float | None:
    return float(num / denom) if denom else None


def _classification_report(
    out: dict[str, Any],
    names: list[str],
    counted: list[str],
    by_name: dict[str, np.ndarray],
    rows: dict[str, int],
    k: int,
    classes: list[Any] | None,
    column: str,
    min_group_size: int,
) -> dict[str, Any]:
    labels = [str(c) for c in (classes or range(k))]

    def pred(s: np.ndarray, c: int) -> float:
        return float(s[2 + c])

    def tp(s: np.ndarray, c: int) -> float:
        return float(s[2 + k + c])

    def true(s: np.ndarray, c: int) -> float:
        return float(s[2 + 2 * k + c])

    positives = [1] if k == 2 else list(range(k))
    worst_dp: tuple[float, str] | None = None
    worst_eo: tuple[float, str] | None = None
    per_class: dict[str, dict[str, float | None]] = {}
    for pos in positives:
        sel, tpr, fpr = [], [], []
        for g in counted:
            s = by_name[g]
            sel.append(_ratio(pred(s, pos), s[0]))
            tpr.append(_ratio(tp(s, pos), true(s, pos)))
            fpr.append(_ratio(pred(s, pos) - tp(s, pos), s[0] - true(s, pos)))
        dp = _spread(sel)
        gaps = [v for v in (_spread(tpr), _spread(fpr)) if v is not None]
        eo = max(gaps) if gaps else None
        per_class[labels[pos]] = {"demographic_parity_difference": dp, "equalized_odds_difference": eo}
        if dp is not None and (worst_dp is None or dp > worst_dp[0]):
            worst_dp = (dp, labels[pos])
        if eo is not None and (worst_eo is None or eo > worst_eo[0]):
            worst_eo = (eo, labels[pos])
    for g in names:
        s = by_name[g]
        entry: dict[str, Any] = {"group": g, "rows": rows[g], "accuracy": float(s[1] / s[0])}
        if k == 2:
            entry["selection_rate"] = _ratio(pred(s, 1), s[0])
            entry["positive_rate"] = _ratio(true(s, 1), s[0])
            entry["true_positive_rate"] = _ratio(tp(s, 1), true(s, 1))
            entry["false_positive_rate"] = _ratio(pred(s, 1) - tp(s, 1), s[0] - true(s, 1))
        else:
            entry["selection_rates"] = {labels[c]: _ratio(pred(s, c), s[0]) for c in range(k)}
        out["groups"].append(entry)
    return _differences(out, labels, k, worst_dp, worst_eo, per_class, len(counted), column, min_group_size)
