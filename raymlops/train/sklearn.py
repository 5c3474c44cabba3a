"""``kind: sklearn``: any scikit-learn-compatible estimator, searched with Ray Tune.

Each trial fits the estimator on the training split (materialized once in Ray's object store and
read zero-copy by the trial) and reports the validation metric. Estimators that can grow
(``warm_start`` with ``max_iter`` or ``n_estimators``, e.g. HistGradientBoosting) report after each
of a few growth steps, so ASHA can stop weak trials early. The winner is refitted on
train+validation by a Ray task: the rows never pass through the driver.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import ray
from ray import tune

from raymlops.config import ModelConfig, TuneConfig
from raymlops.evaluate.metrics import compute_metrics
from raymlops.model.sklearn import SklearnPredictor, estimator_class
from raymlops.train.base import SplitArrays, TrainedModel, TrainingData
from raymlops.train.tune import best_or_raise, resolve_metric, run_search, summarize_trials, trial_concurrency

__all__ = ["STEPS", "growth_steps", "train"]

STEPS = 5
_GROWTH_PARAMS = ("max_iter", "n_estimators")


def growth_steps(estimator: Any) -> tuple[str, list[int]] | None:
    """(parameter, sizes) when the estimator can grow with ``warm_start``; None otherwise."""
    params = estimator.get_params()
    if "warm_start" not in params:
        return None
    for name in _GROWTH_PARAMS:
        total = params.get(name)
        if isinstance(total, int) and total > 1:
            steps = min(STEPS, total)
            return name, [math.ceil(total * (i + 1) / steps) for i in range(steps)]
    return None


def _make(path: str, params: dict[str, Any]) -> Any:
    return estimator_class(path)(**params)


def _sklearn_trial(
    config: dict[str, Any],
    *,
    path: str,
    base: dict[str, Any],
    train: SplitArrays,
    val: SplitArrays,
    task: str,
    n_classes: int,
) -> None:
    estimator = _make(path, {**base, **config})
    X_train, y_train = train.get()
    X_val, y_val = val.get()
    predictor = SklearnPredictor(estimator, task, n_classes)
    growth = growth_steps(estimator)
    sizes: list[int | None] = list(growth[1]) if growth else [None]
    for size in sizes:
        if growth is not None:
            estimator.set_params(warm_start=True, **{growth[0]: size})
        estimator.fit(X_train, y_train)
        result = compute_metrics(task, y_val, predictor.scores(X_val), n_classes)
        tune.report({**result, "step_size": size or 0})


def _refit(path: str, params: dict[str, Any], train: Any, val: Any) -> Any:
    X = np.concatenate([train[0], val[0]])
    y = np.concatenate([train[1], val[1]])
    return _make(path, params).fit(X, y)


_refit_remote = ray.remote(num_cpus=1)(_refit)


MAX_ROWS = 1_000_000
log = logging.getLogger("raymlops")


def train(
    model_cfg: ModelConfig,
    tune_cfg: TuneConfig,
    data: TrainingData,
    *,
    storage_path: str,
    experiment: str,
    resume: bool = False,
    base_dir: str | None = None,
) -> TrainedModel:
    """Search the estimator's space with Tune, then refit the winner on train+validation."""
    assert model_cfg.estimator is not None  # the config refuses kind sklearn without one
    metric, mode = resolve_metric(tune_cfg, data.task)
    # scikit-learn estimators fit in one process's memory: beyond MAX_ROWS they see a seeded sample
    train_arrays = data.arrays("train", max_rows=MAX_ROWS)
    val_arrays = data.arrays("val", max_rows=MAX_ROWS // 4)
    sampled_rows = data.sampled("train", MAX_ROWS)
    if sampled_rows:
        log.warning(
            "%s: %d training rows; kind sklearn fits in one process, on a seeded sample of ~%d",
            model_cfg.name,
            data.n_train,
            MAX_ROWS,
        )
    probe = _make(model_cfg.estimator, model_cfg.params)
    trainable = tune.with_parameters(
        _sklearn_trial,
        path=model_cfg.estimator,
        base=model_cfg.params,
        train=train_arrays,
        val=val_arrays,
        task=data.task,
        n_classes=data.n_classes,
    )
    results = run_search(
        trainable,
        model_cfg=model_cfg,
        tune_cfg=tune_cfg,
        metric=metric,
        mode=mode,
        resources={"cpu": 1},
        max_concurrent=trial_concurrency(tune_cfg, 1.0),
        max_t=len((growth_steps(probe) or ("", [1]))[1]),
        storage_path=storage_path,
        experiment=experiment,
        resume=resume,
    )
    best = best_or_raise(results, metric, mode, model_cfg.name)
    sampled = {k: v for k, v in (best.config or {}).items() if k in model_cfg.search}
    params = {**model_cfg.params, **sampled}
    estimator = ray.get(_refit_remote.remote(model_cfg.estimator, params, train_arrays.ref, val_arrays.ref))
    return TrainedModel(
        name=model_cfg.name,
        kind="sklearn",
        workers=1,
        best_params=params,
        val_metric=float((best.metrics or {})[metric]),
        estimator=estimator,
        trials=summarize_trials(results, metric),
        metadata={"estimator": model_cfg.estimator},
        extra={"training_rows_sampled": MAX_ROWS} if sampled_rows else {},
    )
