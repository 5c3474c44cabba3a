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

from raymlops.config import ModelConfig, TuneConfig
from raymlops.evaluate.metrics import compute_metrics
from raymlops.model.random_forest import ForestParams
from raymlops.train.base import SplitArrays, TrainedModel, TrainingData, row_share_mask
from raymlops.train.tune import (
    best_or_raise,
    iter_results,
    resolve_metric,
    run_search,
    summarize_trials,
    trial_concurrency,
)

__all__ = [
    "STEPS",
    "TREE_ROWS",
    "fit_forest",
    "fit_forest_sampled",
    "forest_estimator",
    "train",
    "tree_seeds",
]

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


def _build_trees_from(
    arrays: tuple[np.ndarray, np.ndarray], seeds: list[int], task: str, params: dict[str, Any]
) -> tuple[list[Any], int, int]:
    X, y = arrays
    return _build_trees(X, y, seeds, task, params), X.shape[0], X.shape[1]


_build_trees_remote = ray.remote(num_cpus=1)(_build_trees_from)


def _concat(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])


_concat_remote = ray.remote(num_cpus=0.5)(_concat)


def _merge(
    trees: list[Any], task: str, params: ForestParams, n_rows: int, n_cols: int, n_classes: int
) -> Any:
    """One plain scikit-learn forest made of trees built elsewhere."""
    forest = forest_estimator(task, params)
    forest.estimator_ = forest._get_estimator() if hasattr(forest, "_get_estimator") else trees[0]
    forest.estimators_ = trees
    forest.n_features_in_ = n_cols
    forest.n_outputs_ = 1
    forest._n_samples = n_rows
    forest._n_samples_bootstrap = (
        n_rows if params.max_samples is None else max(1, round(n_rows * params.max_samples))
    )
    if task == "classification":
        forest.classes_ = np.arange(n_classes)
        forest.n_classes_ = n_classes
    return forest


def _chunks(params: ForestParams, workers: int) -> list[list[int]]:
    seeds = tree_seeds(params.random_state, params.n_estimators)
    return [c.tolist() for c in np.array_split(seeds, max(1, min(workers, len(seeds)))) if len(c)]


def fit_forest(
    X: np.ndarray, y: np.ndarray, task: str, params: ForestParams, *, workers: int = 1, n_classes: int = 0
) -> Any:
    """Fit one forest from in-memory arrays, its trees built by ``workers`` Ray tasks."""
    n_classes = n_classes or (int(np.max(y)) + 1 if task == "classification" else 0)
    if workers <= 1 or not ray.is_initialized():
        trees = _build_trees(
            X, y, tree_seeds(params.random_state, params.n_estimators).tolist(), task, params.model_dump()
        )
        return _merge(trees, task, params, X.shape[0], X.shape[1], n_classes)
    return fit_forest_ref(SplitArrays(ray.put((X, y))), task, params, workers=workers, n_classes=n_classes)


def fit_forest_ref(
    arrays: SplitArrays, task: str, params: ForestParams, *, workers: int, n_classes: int
) -> Any:
    """Fit one forest on arrays held in the object store; the rows never reach the driver."""
    param_dict = params.model_dump()
    futures = [
        _build_trees_remote.remote(arrays.ref, chunk, task, param_dict) for chunk in _chunks(params, workers)
    ]
    parts = ray.get(futures)
    trees = [t for part, _, _ in parts for t in part]
    return _merge(trees, task, params, parts[0][1], parts[0][2], n_classes)


# Beyond this many rows each tree is built from its own seeded sample of about this size, drawn
# from the Ray Datasets by the task that builds it (its memory: ~rows x features x 4 bytes per tree
# of its chunk, plus scikit-learn's working copy; see benchmarks/train_scale.py for measurements).
TREE_ROWS = 250_000
TRIAL_VAL_ROWS = 100_000


def _sampled_trees(
    datasets: list[Any], seeds: list[int], share: float, task: str, params: dict[str, Any]
) -> tuple[list[Any], int, int]:
    """Build trees, each from the rows its seed's hash sample picks, reading the Datasets once."""
    xs: dict[int, list[np.ndarray]] = {s: [] for s in seeds}
    ys: dict[int, list[np.ndarray]] = {s: [] for s in seeds}
    n_cols = 0
    for ds in datasets:
        for batch in ds.iter_batches(batch_size=65_536, batch_format="numpy"):
            rows = np.asarray(batch["row"])
            X, y = np.asarray(batch["x"], dtype=np.float32), np.asarray(batch["y"])
            n_cols = X.shape[1]
            for seed in seeds:
                keep = row_share_mask(rows, share, salt=int(seed) + 1)
                xs[seed].append(X[keep])
                ys[seed].append(y[keep])
    trees, drawn = [], 0
    for seed in seeds:
        X_s, y_s = np.concatenate(xs.pop(seed)), np.concatenate(ys.pop(seed))
        drawn = max(drawn, len(X_s))
        trees.extend(_build_trees(X_s, y_s, [seed], task, params))
    return trees, drawn, n_cols


# Half a CPU: the task reads its rows through Ray Data, whose read tasks need the other half.
_sampled_trees_remote = ray.remote(num_cpus=0.5)(_sampled_trees)


def fit_forest_sampled(
    datasets: list[Any], n_rows: int, task: str, params: ForestParams, *, workers: int, n_classes: int
) -> Any:
    """Fit one forest whose trees each see a bounded sample of the rows; no task holds them all."""
    share = min(1.0, TREE_ROWS / max(1, n_rows))
    param_dict = params.model_dump()
    futures = [
        _sampled_trees_remote.remote(datasets, chunk, share, task, param_dict)
        for chunk in _chunks(params, workers)
    ]
    parts = ray.get(futures)
    trees = [t for part, _, _ in parts for t in part]
    return _merge(trees, task, params, max(p[1] for p in parts), parts[0][2], n_classes)


def forest_scores(estimator: Any, X: np.ndarray, task: str) -> np.ndarray:
    return estimator.predict_proba(X) if task == "classification" else estimator.predict(X)


def _steps_for(n_estimators: int) -> list[int]:
    """Forest sizes after each Tune step: STEPS roughly equal blocks of trees."""
    steps = min(STEPS, n_estimators)
    return [math.ceil(n_estimators * (i + 1) / steps) for i in range(steps)]


def _forest_trial(
    config: dict[str, Any],
    *,
    train: SplitArrays,
    val: SplitArrays,
    task: str,
    n_classes: int,
    base: dict[str, Any],
) -> None:
    params = ForestParams.model_validate({**base, **config})
    X_train, y_train = train.get()
    X_val, y_val = val.get()
    forest = forest_estimator(task, params, n_estimators=1)
    forest.set_params(warm_start=True, n_jobs=1)
    for size in _steps_for(params.n_estimators):
        forest.set_params(n_estimators=size)
        forest.fit(X_train, y_train)
        scores = forest_scores(forest, X_val, task)
        if task == "classification" and scores.shape[1] < n_classes:
            full = np.zeros((len(scores), n_classes))
            full[:, forest.classes_.astype(int)] = scores
            scores = full
        result = compute_metrics(task, y_val, scores, n_classes)
        tune.report({**result, "trees": size})


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
    """Search the forest's space with Tune, then refit the winner tree-parallel on train+validation."""
    metric, mode = resolve_metric(tune_cfg, data.task)
    # Trials grow forests on a seeded sample when the data is large: they rank parameters, and
    # the final refit below builds every tree from its own sample of all the rows.
    train_arrays = data.arrays("train", max_rows=TREE_ROWS)
    val_arrays = data.arrays("val", max_rows=TRIAL_VAL_ROWS)
    trainable = tune.with_parameters(
        _forest_trial,
        train=train_arrays,
        val=val_arrays,
        task=data.task,
        n_classes=data.n_classes,
        base=model_cfg.params,
    )
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
    best = best_or_raise(results, metric, mode, model_cfg.name)
    sampled = {k: v for k, v in (best.config or {}).items() if k in model_cfg.search}
    params = ForestParams.model_validate({**model_cfg.params, **sampled})
    n_rows = data.n_train + data.n_val
    extra: dict[str, Any] = {}
    if n_rows > TREE_ROWS:
        forest = fit_forest_sampled(
            [data.train, data.val],
            n_rows,
            data.task,
            params,
            workers=model_cfg.workers,
            n_classes=data.n_classes,
        )
        extra["rows_per_tree"] = int(forest._n_samples)
    else:
        both = SplitArrays(_concat_remote.remote(train_arrays.ref, val_arrays.ref))
        forest = fit_forest_ref(both, data.task, params, workers=model_cfg.workers, n_classes=data.n_classes)
    trials = summarize_trials(results, metric)
    return TrainedModel(
        name=model_cfg.name,
        kind="random_forest",
        workers=model_cfg.workers,
        best_params={**model_cfg.params, **sampled},
        val_metric=float((best.metrics or {})[metric]),
        estimator=forest,
        trials=trials,
        extra={
            "trees_built_in_search": int(sum(t.get("trees") or 0 for t in _trial_trees(results))),
            **extra,
        },
    )


def _trial_trees(results: tune.ResultGrid) -> list[dict[str, Any]]:
    return [{"trees": (r.metrics or {}).get("trees", 0)} for r in iter_results(results)]
