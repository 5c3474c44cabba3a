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

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MISSING_GROUP", "fairness_report", "group_labels"]

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
    out["positive_class"] = labels[1] if k == 2 else "each class in turn (worst reported)"
    out["demographic_parity_difference"] = worst_dp[0] if worst_dp else None
    out["equalized_odds_difference"] = worst_eo[0] if worst_eo else None
    if k > 2:
        out["per_class"] = per_class
        out["worst_class"] = {
            "demographic_parity_difference": worst_dp[1] if worst_dp else None,
            "equalized_odds_difference": worst_eo[1] if worst_eo else None,
        }
    if len(counted) < 2:
        out["note"] = (
            f"fewer than two groups of {column!r} have {min_group_size}+ held-out rows: "
            "differences are undefined"
        )
    return out
