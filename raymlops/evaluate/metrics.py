"""Held-out metrics for both tasks, computed the same way in Tune trials, the gate and monitoring."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

__all__ = ["bootstrap_interval", "compute_metrics", "confusion", "metric_value"]


def compute_metrics(
    task: str, y_true: np.ndarray, scores: np.ndarray, n_classes: int = 0
) -> dict[str, float]:
    """Metrics from class probabilities (classification) or predictions (regression).

    Args:
        task: "classification" or "regression".
        y_true: class indices 0..k-1, or target values.
        scores: (n, k) probabilities, or (n,) predictions.
        n_classes: k, so log loss and AUC count classes absent from this sample.
    """
    if task == "regression":
        pred = np.asarray(scores, dtype=float).reshape(-1)
        return {
            "rmse": float(np.sqrt(skm.mean_squared_error(y_true, pred))),
            "mae": float(skm.mean_absolute_error(y_true, pred)),
            "r2": float(skm.r2_score(y_true, pred)),
        }
    proba = _normalized(np.asarray(scores, dtype=float))
    k = n_classes or proba.shape[1]
    labels = np.arange(k)
    pred = proba.argmax(axis=1)
    out = {
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "f1_macro": float(skm.f1_score(y_true, pred, average="macro", labels=labels, zero_division=0)),
        "log_loss": float(skm.log_loss(y_true, np.clip(proba, 1e-15, 1), labels=labels)),
    }
    present = np.unique(y_true)
    if len(present) == k and k >= 2:
        if k == 2:
            out["roc_auc"] = float(skm.roc_auc_score(y_true, proba[:, 1]))
        else:
            norm = proba / np.clip(proba.sum(axis=1, keepdims=True), 1e-12, None)
            out["roc_auc"] = float(skm.roc_auc_score(y_true, norm, multi_class="ovr", labels=labels))
    return out


def _normalized(proba: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to one: float32 scores (ONNX, Keras) drift off 1 enough to make sklearn warn."""
    sums = proba.sum(axis=1, keepdims=True)
    return proba / np.where(sums > 0, sums, 1.0)


def metric_value(task: str, metric: str, y_true: np.ndarray, scores: np.ndarray, n_classes: int = 0) -> float:
    """One metric, computed directly for the common ones.

    Permutation importance evaluates hundreds of shuffled copies; computing every metric (a multi-class
    ROC AUC among them) for each copy cost seconds more than scoring them did.
    """
    y = np.asarray(y_true)
    if task == "regression":
        pred = np.asarray(scores, dtype=float).reshape(-1)
        err = pred - y.astype(float)
        if metric == "rmse":
            return float(np.sqrt(np.mean(err**2)))
        if metric == "mae":
            return float(np.mean(np.abs(err)))
    else:
        proba = np.asarray(scores, dtype=float)
        if metric == "accuracy":
            return float(np.mean(proba.argmax(axis=1) == y))
        if metric == "log_loss":
            p = np.clip(_normalized(proba)[np.arange(len(y)), y.astype(int)], 1e-15, 1)
            return float(-np.mean(np.log(p)))
    return compute_metrics(task, y, scores, n_classes)[metric]


def confusion(y_true: np.ndarray, pred: np.ndarray, n_classes: int) -> list[list[int]]:
    return skm.confusion_matrix(y_true, pred, labels=np.arange(n_classes)).tolist()


def bootstrap_interval(
    task: str,
    y_true: np.ndarray,
    scores: np.ndarray,
    metric: str,
    n_classes: int = 0,
    *,
    rounds: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap interval of one metric over the held-out rows."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    values = []
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        try:
            values.append(compute_metrics(task, y_true[idx], scores[idx], n_classes)[metric])
        except (KeyError, ValueError):
            continue
    if not values:
        return {"metric": metric, "low": None, "high": None, "rounds": 0}
    alpha = (1 - level) / 2
    return {
        "metric": metric,
        "low": float(np.quantile(values, alpha)),
        "high": float(np.quantile(values, 1 - alpha)),
        "level": level,
        "rounds": len(values),
    }
