"""The output columns every scoring path writes, defined once.

``raymlops score`` writes them to Parquet, ``raymlops serve`` answers with them, ``monitor`` reads
them back from request logs and the MLflow export returns them: one definition keeps the four in
agreement.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._schema import TableSchema

__all__ = [
    "PREDICTION",
    "PROBA_PREFIX",
    "label_dtype",
    "labels_from_scores",
    "output_columns",
    "proba_column",
    "proba_columns",
]

#: The predicted label (classification) or value (regression).
PREDICTION = "prediction"
#: Prefix of the per-class probability columns: ``proba_<class>``.
PROBA_PREFIX = "proba_"


def proba_column(label: Any) -> str:
    return f"{PROBA_PREFIX}{label}"


def proba_columns(classes: list[Any] | None) -> list[str]:
    return [proba_column(c) for c in classes or []]


def output_columns(schema: TableSchema) -> list[str]:
    """The prediction column, then one probability column per class for a classifier."""
    if schema.task == "classification":
        return [PREDICTION, *proba_columns(schema.classes)]
    return [PREDICTION]


def label_dtype(classes: list[Any]) -> Any:
    """The numpy dtype that holds every class label without changing it."""
    if classes and all(isinstance(c, (bool, np.bool_)) for c in classes):
        return np.bool_
    if classes and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in classes):
        return np.int64
    if classes and all(isinstance(c, (float, np.floating, int, np.integer)) for c in classes):
        return np.float64
    return object


def labels_from_scores(schema: TableSchema, scores: np.ndarray) -> np.ndarray:
    """Predicted labels (argmax of the probabilities) or the predicted values themselves."""
    if schema.task != "classification":
        return np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = list(schema.classes or [])
    lookup = np.asarray(classes, dtype=label_dtype(classes))
    if len(scores) == 0:
        return np.zeros(0, dtype=lookup.dtype)
    return lookup[np.asarray(scores).argmax(axis=1)]
