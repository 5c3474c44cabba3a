"""``kind: sklearn``: any scikit-learn-compatible estimator, named by its import path.

``estimator: sklearn.ensemble.HistGradientBoostingClassifier`` plus ``params`` checked against the
class's own ``get_params()``, so a misspelled parameter is refused when the pipeline file is read.
The fitted estimator is saved with skops (see :mod:`raymlops.model._skops`), never pickled.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from ._kinds import SavedFiles, check_keys
from ._schema import TableSchema
from ._skops import load_estimator, save_estimator

__all__ = ["KIND", "SklearnPredictor", "estimator_class"]


def estimator_class(path: str) -> type:
    """The class at ``package.module.Class`` (raises ValueError naming what is wrong)."""
    module_name, _, attr = path.rpartition(".")
    if not module_name or not attr.isidentifier():
        raise ValueError(
            f"estimator {path!r} must be an import path like sklearn.ensemble.RandomForestClassifier"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"estimator {path!r}: cannot import {module_name!r}: {err}") from None
    cls = getattr(module, attr, None)
    if not isinstance(cls, type) or not hasattr(cls, "get_params") or not hasattr(cls, "fit"):
        raise ValueError(f"estimator {path!r} is not a scikit-learn-compatible estimator class")
    return cls


class SklearnPredictor:
    """Scores through ``predict_proba`` (classifiers) or ``predict`` (regressors)."""

    def __init__(self, estimator: Any, task: str, n_classes: int) -> None:
        self.estimator = estimator
        self.task = task
        self.n_classes = n_classes

    def scores(self, X: np.ndarray) -> np.ndarray:
        if self.task != "classification":
            return np.asarray(self.estimator.predict(X), dtype=np.float64).reshape(-1)
        proba = np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        classes = getattr(self.estimator, "classes_", None)
        if proba.shape[1] == self.n_classes or classes is None:
            return proba
        full = np.zeros((len(proba), self.n_classes))  # a class absent from the training rows
        full[:, np.asarray(classes, dtype=np.int64)] = proba
        return full


class SklearnKind:
    name = "sklearn"
    gpu_scoring = False

    def check_config(self, model: Any) -> None:
        if not model.estimator:
            raise ValueError("kind sklearn needs `estimator: package.module.Class`")
        cls = estimator_class(model.estimator)
        known = set(cls().get_params())
        check_keys(model.params, known, "params", model.estimator)
        check_keys(model.search, known, "search", model.estimator)

    def wrap(self, estimator: Any, schema: TableSchema) -> SklearnPredictor:
        return SklearnPredictor(estimator, schema.task, schema.n_classes)

    def save(
        self, estimator: Any, folder: Path, *, schema: TableSchema, check_X: np.ndarray | None = None
    ) -> SavedFiles:
        return SavedFiles([save_estimator(estimator, folder)])

    def load(
        self, folder: Path, metadata: dict[str, Any], *, schema: TableSchema, threads: int | None = None
    ) -> SklearnPredictor:
        estimator = load_estimator(folder, declared=metadata.get("estimator"))
        return SklearnPredictor(estimator, schema.task, schema.n_classes)


KIND = SklearnKind()
