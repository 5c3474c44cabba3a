"""Held-out metrics, the bootstrap interval and the fast single-metric path."""

from __future__ import annotations

import numpy as np
import pytest

from raymlops.evaluate.metrics import bootstrap_interval, compute_metrics, confusion, metric_value


def _scores(seed: int = 0, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba.astype(np.float32)  # float32 like ONNX/Keras outputs


def test_classification_metrics_and_interval() -> None:
    y, proba = _scores()
    m = compute_metrics("classification", y, proba, 3)
    assert set(m) == {"accuracy", "f1_macro", "log_loss", "roc_auc"}
    assert 0.5 < m["accuracy"] < 1 and 0.5 < m["roc_auc"] <= 1
    interval = bootstrap_interval("classification", y, proba, "accuracy", 3, rounds=100)
    assert interval["low"] <= m["accuracy"] <= interval["high"] and interval["rounds"] == 100
    assert np.asarray(confusion(y, proba.argmax(axis=1), 3)).sum() == len(y)


def test_regression_metrics() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    m = compute_metrics("regression", y, np.array([1.0, 2.0, 3.0, 5.0]))
    assert (
        m["rmse"] == pytest.approx(0.5) and m["mae"] == pytest.approx(0.25) and m["r2"] == pytest.approx(0.8)
    )


@pytest.mark.parametrize("metric", ["accuracy", "log_loss", "f1_macro", "roc_auc"])
def test_the_fast_path_agrees_with_the_full_metrics(metric: str) -> None:
    y, proba = _scores(1)
    full = compute_metrics("classification", y, proba, 3)[metric]
    assert metric_value("classification", metric, y, proba, 3) == pytest.approx(full, rel=1e-6)


def test_the_fast_path_agrees_for_regression() -> None:
    rng = np.random.default_rng(2)
    y, pred = rng.normal(size=50), rng.normal(size=50)
    full = compute_metrics("regression", y, pred)
    for metric in ("rmse", "mae", "r2"):
        assert metric_value("regression", metric, y, pred) == pytest.approx(full[metric])
