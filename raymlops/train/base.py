"""What every model kind trains on and hands back to the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["TrainedModel", "TrainingData"]


@dataclass
class TrainingData:
    """Preprocessed arrays for one experiment.

    ``y`` holds class indices (0..k-1) for classification, so every model kind agrees on the label
    encoding; ``classes`` maps indices back to the original labels.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    task: Literal["classification", "regression"]
    classes: list[Any] | None
    feature_names: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 0

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])


@dataclass
class TrainedModel:
    """The winner of one model entry's search, refitted and ready to evaluate and register."""

    name: str
    kind: str
    workers: int
    best_params: dict[str, Any]
    val_metric: float
    estimator: Any
    trials: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
