"""Random forests on Ray: tree-parallel fitting and Tune trials that grow their forest in steps.

``SklearnTrainer`` is gone from Ray and tune-sklearn is unmaintained, so raymlops builds the
forest itself: each tree gets its own seed drawn exactly as scikit-learn draws it, trees are built
by Ray tasks in any number of chunks, and the result is an ordinary ``RandomForestClassifier`` /
``RandomForestRegressor``. Tree ``i`` depends only on the forest seed and ``i``, so the same seed
gives the same forest whatever the number of workers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import ray
from ray import tune
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor
from sklearn.utils.class_weight import compute_sample_weight

from raymlops.config import ForestParams, ModelConfig, TuneConfig
from raymlops.evaluate.metrics import compute_metrics
from raymlops.train.base import TrainedModel, TrainingData
from raymlops.train.tune import iter_results, resolve_metric, run_search, summarize_trials, trial_concurrency

__all__ = ["STEPS", "fit_forest", "forest_estimator", "tree_seeds", "tune_forest"]

STEPS = 5
_MAX_INT = np.iinfo(np.int32).max


def forest_estimator(task: str, params: ForestParams, n_estimators: int | None = None) -> Any:
    """A plain scikit-learn forest with the pipeline file's parameters."""
    kwargs: dict[str, Any] = {
        "n_estimators": n_estimators or params.n_estimators,
        "max_depth": params.max_depth,
        "min_samples_leaf": params.min_samples_leaf,
        "max_features": params.max_features,
        "bootstrap": params.bootstrap,
        "max_samples": params.max_samples if params.bootstrap else None,
        "random_state": params.random_state,
    }
    if task == "classification":
        return RandomForestClassifier(class_weight=params.class_weight, **kwargs)
    if kwargs["max_features"] == "sqrt":
        kwargs["max_features"] = 1.0  # scikit-learn's regressor default: all features
    return RandomForestRegressor(**kwargs)


def tree_seeds(random_state: int, n_estimators: int) -> np.ndarray:
    """Per-tree seeds, drawn as scikit-learn draws them for ``random_state``."""
    rng = np.random.RandomState(random_state)
    return np.array([rng.randint(_MAX_INT) for _ in range(n_estimators)])


def _build_trees(
    X: np.ndarray, y: np.ndarray, seeds: list[int], task: str, params: dict[str, Any]
) -> list[Any]:
    template = forest_estimator(task, ForestParams.model_validate(params))
    n_samples = X.shape[0]
    n_draws = n_samples if template.max_samples is None else max(1, round(n_samples * template.max_samples))
    trees = []
    for seed in seeds:
        tree_cls = DecisionTreeClassifier if task == "classification" else DecisionTreeRegressor
        tree_kwargs: dict[str, Any] = {
            "max_depth": template.max_depth,
            "min_samples_leaf": template.min_samples_leaf,
            "max_features": template.max_features,
            "random_state": int(seed),
        }
        if task == "classification":
            tree_kwargs["criterion"] = template.criterion
        tree = tree_cls(**tree_kwargs)
        weight = np.ones(n_samples, dtype=np.float64)
        if template.bootstrap:
            # The bootstrap draw scikit-learn makes for a tree with this seed.
            indices = np.random.RandomState(int(seed)).randint(0, n_samples, n_draws)
            weight = np.bincount(indices, minlength=n_samples).astype(np.float64)
            if task == "classification" and template.class_weight == "balanced_subsample":
                weight *= compute_sample_weight("balanced", y, indices=indices)
        if task == "classification" and template.class_weight == "balanced":
            weight *= compute_sample_weight("balanced", y)
        tree.fit(X, y, sample_weight=weight)
        trees.append(tree)
    return trees


_build_trees_remote = ray.remote(num_cpus=1)(_build_trees)


def fit_forest(
    X: np.ndarray, y: np.ndarray, task: str, params: ForestParams, *, workers: int = 1, n_classes: int = 0
) -> Any:
    """Fit one forest with its trees built by ``workers`` Ray tasks, merged into one estimator."""
    seeds = tree_seeds(params.random_state, params.n_estimators)
    chunks = [c.tolist() for c in np.array_split(seeds, max(1, min(workers, len(seeds)))) if len(c)]
    param_dict = params.model_dump()
    if workers <= 1 or not ray.is_initialized():
        trees = _build_trees(X, y, seeds.tolist(), task, param_dict)
    else:
        X_ref, y_ref = ray.put(X), ray.put(y)
        futures = [_build_trees_remote.remote(X_ref, y_ref, chunk, task, param_dict) for chunk in chunks]
        trees = [t for part in ray.get(futures) for t in part]
    forest = forest_estimator(task, params)
    forest.estimator_ = forest._get_estimator() if hasattr(forest, "_get_estimator") else trees[0]
    forest.estimators_ = trees
    forest.n_features_in_ = X.shape[1]
    forest.n_outputs_ = 1
    forest._n_samples = X.shape[0]
    forest._n_samples_bootstrap = (
        X.shape[0] if params.max_samples is None else max(1, round(X.shape[0] * params.max_samples))
    )
    if task == "classification":
        forest.classes_ = np.arange(n_classes or int(y.max()) + 1)
        forest.n_classes_ = len(forest.classes_)
    return forest


def forest_scores(estimator: Any, X: np.ndarray, task: str) -> np.ndarray:
    return estimator.predict_proba(X) if task == "classification" else estimator.predict(X)


def _steps_for(n_estimators: int) -> list[int]:
    """Forest sizes after each Tune step: STEPS roughly equal blocks of trees."""
    steps = min(STEPS, n_estimators)
    return [math.ceil(n_estimators * (i + 1) / steps) for i in range(steps)]


def _forest_trial(config: dict[str, Any], *, data: TrainingData, base: dict[str, Any], metric: str) -> None:
    params = ForestParams.model_validate({**base, **config})
    forest = forest_estimator(data.task, params, n_estimators=1)
    forest.set_params(warm_start=True, n_jobs=1)
    for size in _steps_for(params.n_estimators):
        forest.set_params(n_estimators=size)
        forest.fit(data.X_train, data.y_train)
        scores = forest_scores(forest, data.X_val, data.task)
        if data.task == "classification" and scores.shape[1] < data.n_classes:
            full = np.zeros((len(scores), data.n_classes))
            full[:, forest.classes_.astype(int)] = scores
            scores = full
        result = compute_metrics(data.task, data.y_val, scores, data.n_classes)
        tune.report({**result, "trees": size})


def tune_forest(
    model_cfg: ModelConfig,
    tune_cfg: TuneConfig,
    data: TrainingData,
    *,
    storage_path: str,
    experiment: str,
    resume: bool = False,
) -> TrainedModel:
    """Search the forest's space with Tune, then refit the winner tree-parallel on train+validation."""
    metric, mode = resolve_metric(tune_cfg, data.task)
    trainable = tune.with_parameters(_forest_trial, data=data, base=model_cfg.params, metric=metric)
    results = run_search(
        trainable,
        model_cfg=model_cfg,
        tune_cfg=tune_cfg,
        metric=metric,
        mode=mode,
        resources={"cpu": 1},
        max_concurrent=trial_concurrency(tune_cfg, 1.0),
        max_t=STEPS,
        storage_path=storage_path,
        experiment=experiment,
        resume=resume,
    )
    best = results.get_best_result(metric=metric, mode=mode, scope="last")
    if best.metrics is None or best.error is not None:
        errors = [str(r.error) for r in iter_results(results) if r.error]
        raise RuntimeError(f"every trial of model {model_cfg.name!r} failed: {errors[:1]}")
    sampled = {k: v for k, v in (best.config or {}).items() if k in model_cfg.search}
    params = model_cfg.typed_params(sampled)
    X = np.vstack([data.X_train, data.X_val])
    y = np.concatenate([data.y_train, data.y_val])
    forest = fit_forest(X, y, data.task, params, workers=model_cfg.workers, n_classes=data.n_classes)
    trials = summarize_trials(results, metric)
    return TrainedModel(
        name=model_cfg.name,
        kind="random_forest",
        workers=model_cfg.workers,
        best_params={**model_cfg.params, **sampled},
        val_metric=float(best.metrics[metric]),
        estimator=forest,
        trials=trials,
        extra={"trees_built_in_search": int(sum(t.get("trees") or 0 for t in _trial_trees(results)))},
    )


def _trial_trees(results: tune.ResultGrid) -> list[dict[str, Any]]:
    return [{"trees": (r.metrics or {}).get("trees", 0)} for r in iter_results(results)]
