"""Training: one Ray Tune / Ray Train driver per model kind, ``raymlops/train/<kind>.py``.

Each module exports ``train(model_cfg, tune_cfg, data, *, storage_path, experiment, resume,
base_dir) -> TrainedModel``; :func:`train_model` picks it by the entry's kind. Nothing used at
inference time imports this package (a lint rule says so).
"""

from __future__ import annotations

import importlib
from typing import Any

from raymlops.train.base import SplitArrays, TrainedModel, TrainingData, dataset_from_arrays
from raymlops.train.tune import TrainingError

__all__ = [
    "SplitArrays",
    "TrainedModel",
    "TrainingData",
    "TrainingError",
    "dataset_from_arrays",
    "train_model",
]


def train_model(
    model_cfg: Any,
    tune_cfg: Any,
    data: TrainingData,
    *,
    storage_path: str,
    experiment: str,
    resume: bool = False,
    base_dir: str | None = None,
) -> TrainedModel:
    """Search and train one model entry with its kind's trainer."""
    module = importlib.import_module(f"raymlops.train.{model_cfg.kind}")
    trained: TrainedModel = module.train(
        model_cfg,
        tune_cfg,
        data,
        storage_path=storage_path,
        experiment=experiment,
        resume=resume,
        base_dir=base_dir,
    )
    return trained
