"""Loading a version once per Ray worker process and scoring batches with it inside Ray Data tasks."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["PREDICTION_COLUMN", "cached_bundle", "labels_from_scores", "proba_columns", "score_batch"]

PREDICTION_COLUMN = "prediction"
_CACHE: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def cached_bundle(store_uri: str, model_ref: str) -> Any:
    """The version's :class:`~raymlops.bundle.ModelBundle`, loaded (and sha256-checked) once per process.

    Ray reuses worker processes across tasks, so a monitor over a thousand blocks loads the model
    a handful of times, not a thousand.
    """
    from raymlops.bundle import ModelBundle

    key = (store_uri, model_ref)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = ModelBundle.load(model_ref, store_uri)
        return _CACHE[key]


def proba_columns(classes: list[Any] | None) -> list[str]:
    return [f"proba_{c}" for c in classes or []]


def score_batch(bundle: Any, batch: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Scores for the rows the model accepts, and the mask of those rows.

    Returns:
        ``(scores, valid)``: scores has one row per valid row ((m, k) probabilities or (m,) values).
    """
    check = bundle.check_rows(batch)
    valid = check.valid
    if not valid.any():
        k = len(bundle.classes or [])
        empty = np.zeros((0, k)) if bundle.schema.task == "classification" else np.zeros(0)
        return empty, valid
    scores = np.asarray(bundle.scores(bundle.transform(check.frame[valid])))
    return scores, valid


def labels_from_scores(bundle: Any, scores: np.ndarray) -> np.ndarray:
    """Predicted class labels (classification) or the predictions themselves (regression)."""
    if bundle.schema.task == "classification":
        classes = np.asarray(bundle.classes, dtype=object)
        return classes[scores.argmax(axis=1)] if len(scores) else np.zeros(0, dtype=object)
    return np.asarray(scores, dtype="float64").reshape(-1)
