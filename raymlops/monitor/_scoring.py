"""Loading a version once per Ray worker process and scoring batches with it inside Ray Data tasks."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from raymlops.model import PREDICTION, labels_from_scores, proba_columns

__all__ = ["PREDICTION_COLUMN", "cached_bundle", "labels_from_scores_of", "proba_columns", "score_batch"]

PREDICTION_COLUMN = PREDICTION
_CACHE: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def cached_bundle(store_uri: str, model_ref: str) -> Any:
    """The version's :class:`~raymlops.model.ModelBundle`, loaded (and verified) once per process.

    Ray reuses worker processes across tasks, so a monitor over a thousand blocks loads the model
    a handful of times, not a thousand.
    """
    from raymlops.model import ModelBundle

    key = (store_uri, model_ref)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = ModelBundle.load(model_ref, store_uri)
        return _CACHE[key]


def score_batch(bundle: Any, batch: Any) -> tuple[np.ndarray, np.ndarray]:
    """Scores for the rows the model accepts, and the mask of those rows.

    Returns:
        ``(scores, valid)``: scores has one row per valid row ((m, k) probabilities or (m,) values).
    """
    scored = bundle.score(batch)
    return np.asarray(scored.scores), scored.valid


def labels_from_scores_of(bundle: Any, scores: np.ndarray) -> np.ndarray:
    """Predicted class labels (classification) or the predictions themselves (regression)."""
    return labels_from_scores(bundle.schema, scores)
