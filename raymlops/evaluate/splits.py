"""Evaluation of every candidate and the champion over a held-out split the driver never holds.

One Ray Data ``map_batches`` pass over the raw test rows scores each batch with every model
through the one scoring path (:meth:`~raymlops.model.ModelBundle.score`: check, transform,
predict) and turns it into mergeable partial results: held-out metrics and the bootstrap interval
(:mod:`raymlops.evaluate.heldout`), fairness per group (:class:`~raymlops.evaluate.fairness.FairnessPartial`),
the prediction statistics of the reference (:class:`~raymlops.evaluate.reference.PredictionPartial`),
optionally the split-drift counts of :mod:`raymlops.monitor._drift`, and a bounded sample of rows
(the ``sample_rows`` rows with the lowest seeded hash of their content: a uniform random sample, the
same whatever the block layout) for permutation importance and partial dependence. Only those
partials travel to the driver, which merges them as they arrive.

Models are sent to the scoring actors once each (``ray.put``); a :class:`BundleRef` instead makes
each actor load a registered version itself (a version whose compiled fast path holds a native
session that does not pickle).
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from raymlops.errors import DataError, InputError
from raymlops.evaluate.fairness import FairnessPartial
from raymlops.evaluate.heldout import INTERVAL_METRICS, MetricsPartial, row_keys, sample_keys
from raymlops.evaluate.reference import QUANTILE_ROWS, HashSample, PredictionPartial, admit_limit

__all__ = [
    "BundleRef",
    "EvaluationResult",
    "ModelEvaluation",
    "encode_target",
    "evaluate_split",
]

log = logging.getLogger("raymlops")

_BATCH_ROWS = 32_768
_CLASSIFICATION_METRICS = {"accuracy", "f1_macro", "log_loss", "roc_auc"}


@dataclass(frozen=True)
class BundleRef:
    """A registered version each scoring actor loads for itself (``NAME:VERSION`` in ``store``)."""

    ref: str
    store: str | None = None

    def load(self) -> Any:
        from raymlops.model import ModelBundle

        return ModelBundle.load(self.ref, self.store)


def encode_target(values: pd.Series | np.ndarray, schema: Any) -> tuple[np.ndarray, np.ndarray]:
    """Targets as the model's metrics read them, and which rows have a usable target.

    Classification: the index of each label in ``schema.classes`` (a label is also found by its
    text, so ``"1"`` read from a CSV matches class ``1``); regression: the value as float64.

    Returns:
        ``(y, known)``: y for the known rows only, and the (n,) mask of known rows (a label the
        model was not trained on, or a missing or non-numeric target, is not known).
    """
    series = pd.Series(values).reset_index(drop=True)
    if schema.task == "classification":
        classes = list(schema.classes or [])
        lookup = {c: i for i, c in enumerate(classes)}
        by_text = {str(c): i for i, c in enumerate(classes)}
        null = series.isna().to_numpy()
        mapped = np.array(series.map(lookup).to_numpy(dtype="float64", na_value=np.nan))
        retry = np.isnan(mapped) & ~null  # a label written another way ("1" for 1)
        if retry.any():
            mapped[retry] = series[retry].astype(str).map(by_text).to_numpy(dtype="float64", na_value=np.nan)
        known = ~np.isnan(mapped)
        return mapped[known].astype(np.int64), known
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    known = np.isfinite(numbers)
    return numbers[known], known


@dataclass
class ModelEvaluation:
    """One model's results on the held-out split.

    Attributes:
        name: the key it was passed under.
        rows: held-out rows it was measured on (scored, with a known target).
        rejected: rows the model could not score (see ``first_rejection``).
        first_rejection: the first of those, with its reason.
        unknown_target: scored rows left out because their target is missing or a label the model
            does not know.
        error: why the model could not score the split at all (a missing feature column), else None.
        metrics: ``compute_metrics``' dict (empty when nothing could be measured).
        interval: ``bootstrap_interval``' dict for the interval metric, or None when not asked for.
        confusion_matrix: (k, k) counts (classification).
        fairness: ``fairness_report``' dict, or None without a group column.
        auc_exact: False when ROC AUC came from logit bins (more than 200k distinct scores).
        partial, fairness_partial, prediction: the merged partials, for further use (the
            prediction partial feeds :func:`~raymlops.evaluate.reference.build_reference_from_partials`).
    """

    name: str
    rows: int = 0
    rejected: int = 0
    first_rejection: str | None = None
    unknown_target: int = 0
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    interval: dict[str, Any] | None = None
    confusion_matrix: list[list[int]] | None = None
    fairness: dict[str, Any] | None = None
    auc_exact: bool = True
    partial: MetricsPartial | None = None
    fairness_partial: FairnessPartial | None = None
    prediction: PredictionPartial | None = None

    def champion_record(self, version: int | None) -> dict[str, Any]:
        """The gate's ``champion`` entry, as the pipeline's in-memory re-scoring writes it."""
        if self.error is not None:
            return {
                "version": version,
                "metrics": {},
                "note": f"champion cannot score these rows: {self.error}",
            }
        if self.rejected:
            return {"version": version, "metrics": {}, "note": "champion cannot score these rows"}
        return {"version": version, "metrics": dict(self.metrics)}


@dataclass
class EvaluationResult:
    """Every model's results on one held-out split, and the bounded row sample.

    Attributes:
        rows: held-out rows read.
        models: name -> :class:`ModelEvaluation`.
        sample: at most ``sample_rows`` raw held-out rows (a seeded uniform sample), for
            permutation importance, partial dependence and residual plots.
        sample_rows: ``len(sample)`` (record it in the version).
        sample_seed: the seed that drew it.
        drift_stats: merged :func:`raymlops.monitor._drift.batch_stats` of the split when a drift
            spec was given (pass to ``finalize`` with the reference), else None.
        seconds: wall time of the pass.
    """

    rows: int
    models: dict[str, ModelEvaluation]
    sample: pd.DataFrame
    sample_rows: int
    sample_seed: int
    drift_stats: dict[str, Any] | None = None
    seconds: float = 0.0

    def explain_inputs(self, name: str, bundle: Any) -> tuple[pd.DataFrame, np.ndarray]:
        """The sample rows with a known target for ``bundle`` and their encoded targets."""
        target = bundle.schema.target
        if target not in self.sample.columns:
            raise InputError(f"the held-out sample has no target column {target!r}")
        y, known = encode_target(self.sample[target], bundle.schema)
        return self.sample[known].reset_index(drop=True), y


@dataclass
class _PassConfig:
    target: str
    group_column: str | None
    seed: int
    interval_metric: str | None
    rounds: int
    detailed: frozenset[str]
    sample_rows: int
    hash_columns: list[str]
    sample_columns: list[str]
    quantile_rows: int
    drift_spec: dict[str, Any] | None
    drift_fraction: float
    min_group_size: int = 10
    sample_admit: int | None = None


@dataclass
class _ModelPart:
    metrics: MetricsPartial | None = None
    fairness: FairnessPartial | None = None
    prediction: PredictionPartial | None = None
    rows: int = 0
    rejected: int = 0
    first_rejection: str | None = None
    unknown_target: int = 0
    error: str | None = None

    def merge(self, other: _ModelPart) -> _ModelPart:
        def both(a: Any, b: Any) -> Any:
            return b if a is None else a if b is None else a.merge(b)

        return _ModelPart(
            both(self.metrics, other.metrics),
            both(self.fairness, other.fairness),
            both(self.prediction, other.prediction),
            self.rows + other.rows,
            self.rejected + other.rejected,
            self.first_rejection or other.first_rejection,
            self.unknown_target + other.unknown_target,
            self.error or other.error,
        )


@dataclass
class _BatchPart:
    rows: int
    models: dict[str, _ModelPart]
    sample: HashSample
    drift: dict[str, Any] | None

    def merge(self, other: _BatchPart) -> _BatchPart:
        drift = self.drift
        if other.drift is not None:
            from raymlops.monitor._drift import merge_stats

            drift = merge_stats(drift, other.drift)
        return _BatchPart(
            self.rows + other.rows,
            {n: m.merge(other.models[n]) for n, m in self.models.items()},
            self.sample.merge(other.sample),
            drift,
        )


def _interval_metric_for(metric: str | None, task: str) -> str | None:
    if metric is None or metric not in INTERVAL_METRICS:
        return None
    return metric if (metric in _CLASSIFICATION_METRICS) == (task == "classification") else None


def _score_model(
    name: str, bundle: Any, batch: pd.DataFrame, keys: np.ndarray, cfg: _PassConfig
) -> _ModelPart:
    """One model on one batch: its partial metrics, fairness counts and prediction statistics."""
    try:
        scored = bundle.score(batch)
    except InputError as err:  # a feature column the model needs is not in the data
        return _ModelPart(error=str(err))
    valid = np.asarray(scored.valid, dtype=bool)
    part = _ModelPart(rejected=int(scored.n_rejected), first_rejection=scored.check.first_error())
    schema = bundle.schema
    if cfg.target not in batch.columns:
        return _ModelPart(error=f"the held-out rows have no target column {cfg.target!r}")
    target = batch[cfg.target].to_numpy()[valid]
    y, known = encode_target(target, schema)
    part.unknown_target = int((~known).sum())
    scores = np.asarray(scored.scores)[known]
    row_k = keys[valid][known]
    k = schema.n_classes
    detailed = name in cfg.detailed
    interval = _interval_metric_for(cfg.interval_metric, schema.task) if detailed else None
    part.rows = len(y)
    part.metrics = MetricsPartial.from_batch(
        y, scores, schema.task, k, row_k, interval_metric=interval, rounds=cfg.rounds, seed=cfg.seed
    )
    part.prediction = PredictionPartial.from_batch(
        scores, schema.task, k, sample_keys(row_k, cfg.seed), cap=cfg.quantile_rows
    )
    if detailed and cfg.group_column is not None:
        if cfg.group_column not in batch.columns:
            return _ModelPart(error=f"the held-out rows have no sensitive column {cfg.group_column!r}")
        sensitive = batch[cfg.group_column].iloc[np.flatnonzero(valid)[known]].reset_index(drop=True)
        part.fairness = FairnessPartial.from_batch(sensitive, y, scores, schema.task, k)
    return part


def _batch_part(batch: pd.DataFrame, bundles: Mapping[str, Any], cfg: _PassConfig) -> _BatchPart:
    batch = batch.reset_index(drop=True)
    present = [c for c in cfg.hash_columns if c in batch.columns]
    keys = row_keys(batch, present)
    models = {name: _score_model(name, b, batch, keys, cfg) for name, b in bundles.items()}
    columns = {c: batch[c].to_numpy() for c in cfg.sample_columns if c in batch.columns}
    sample = HashSample.from_batch(sample_keys(keys, cfg.seed), columns, cfg.sample_rows, cfg.sample_admit)
    drift = None
    if cfg.drift_spec is not None:
        from raymlops.monitor._drift import batch_stats

        drift = batch_stats(batch, cfg.drift_spec, sample_fraction=cfg.drift_fraction, seed=cfg.seed)
    return _BatchPart(len(batch), models, sample, drift)


class _SplitScorer:
    """A Ray Data actor: loads the models once, then turns each batch into a pickled partial."""

    def __init__(self, bundles: Any, cfg: _PassConfig) -> None:
        import ray

        if isinstance(bundles, ray.ObjectRef):
            bundles = ray.get(bundles)
        self.bundles = {
            name: (
                b.load() if isinstance(b, BundleRef) else ray.get(b) if isinstance(b, ray.ObjectRef) else b
            )
            for name, b in bundles.items()
        }
        self.cfg = cfg

    def __call__(self, batch: pd.DataFrame) -> dict[str, np.ndarray]:
        part = _batch_part(batch, self.bundles, self.cfg)
        return {"partial": np.array([pickle.dumps(part)], dtype=object)}


def _finish(
    name: str, part: _ModelPart, bundle_schema: Any, cfg: _PassConfig, level: float
) -> ModelEvaluation:
    out = ModelEvaluation(
        name,
        rows=part.rows,
        rejected=part.rejected,
        first_rejection=part.first_rejection,
        unknown_target=part.unknown_target,
        error=part.error,
        partial=part.metrics,
        fairness_partial=part.fairness,
        prediction=part.prediction,
    )
    if part.error is not None or part.metrics is None or part.rows == 0:
        return out
    out.metrics = part.metrics.finalize()
    if bundle_schema.task == "classification":
        out.confusion_matrix = part.metrics.confusion_matrix()
        out.auc_exact = part.metrics.auc_exact
    if name in cfg.detailed and cfg.interval_metric is not None:
        if part.metrics.bootstrap is not None:
            out.interval = part.metrics.interval(level)
        else:  # the metric does not exist for this task: what bootstrap_interval says then
            out.interval = {"metric": cfg.interval_metric, "low": None, "high": None, "rounds": 0}
    if part.fairness is not None and cfg.group_column is not None:
        out.fairness = part.fairness.finalize(
            bundle_schema.classes, column=cfg.group_column, min_group_size=cfg.min_group_size
        )
    return out


def evaluate_split(
    test_ds: Any,
    bundles: Mapping[str, Any],
    *,
    target: str,
    group_column: str | None = None,
    seed: int = 0,
    interval_metric: str | None = None,
    bootstrap_rounds: int = 200,
    level: float = 0.95,
    detailed: Collection[str] | None = None,
    min_group_size: int = 10,
    sample_rows: int = 2000,
    quantile_rows: int = QUANTILE_ROWS,
    drift_spec: dict[str, Any] | None = None,
    drift_fraction: float = 1.0,
    batch_size: int = _BATCH_ROWS,
    concurrency: int | None = None,
    rows: int | None = None,
) -> EvaluationResult:
    """Score every model on the held-out split in one distributed pass and measure them.

    Args:
        test_ds: a ``ray.data.Dataset`` of the raw held-out rows (feature, target and sensitive
            columns as read from the source).
        bundles: name -> :class:`~raymlops.model.ModelBundle` (candidates, and the champion under a
            name of your choosing) or :class:`BundleRef`. Every one is scored on the same rows.
        target: the target column.
        group_column: the sensitive column for fairness per group (None: no fairness).
        seed: seeds the bootstrap weights and the row sample.
        interval_metric: the metric the bootstrap interval is for (gate.metric or tune.metric);
            None for no interval.
        bootstrap_rounds: resamples B.
        level: the interval's confidence level.
        detailed: the names that get the interval and fairness (default: every model).
        min_group_size: fairness groups smaller than this are listed but not compared.
        sample_rows: rows kept for explanations (the sample's size is returned).
        quantile_rows: regression predictions kept for the reference's quantiles and bin edges.
        drift_spec: ``spec_from_reference(reference)`` to also count the split's drift statistics.
        drift_fraction: share of rows kept in the drift statistics' KS sample.
        batch_size: rows per batch (each batch becomes one partial).
        concurrency: scoring actors at most (default: half the cluster's CPUs, at least 1).
        rows: the split's rows, when known: each batch then sends only its share of the sample
            (``admit_limit``), not up to ``sample_rows``; the same sample, unless duplicate rows
            starve the limit, when it is smaller (its size is returned).

    Returns:
        the merged results, one :class:`ModelEvaluation` per model.
    """
    import ray

    started = time.time()
    names = list(bundles)
    if not names:
        raise ValueError("evaluate_split needs at least one model")
    _check_columns(test_ds, [c for c in (target, group_column) if c is not None])
    schemas = {n: _schema_of(b) for n, b in bundles.items()}
    feature_union = sorted({f for s in schemas.values() for f in s.features})
    extra = [c for c in (target, group_column) if c is not None and c not in feature_union]
    cfg = _PassConfig(
        target=target,
        group_column=group_column,
        seed=seed,
        interval_metric=interval_metric,
        rounds=bootstrap_rounds,
        detailed=frozenset(names if detailed is None else detailed),
        sample_rows=sample_rows,
        hash_columns=sorted([*feature_union, *extra]),
        sample_columns=[*feature_union, *extra],
        quantile_rows=quantile_rows,
        drift_spec=drift_spec,
        drift_fraction=drift_fraction,
        min_group_size=min_group_size,
        sample_admit=admit_limit(rows, sample_rows),
    )
    shipped = {n: _ship(n, b) for n, b in bundles.items()}
    if concurrency is None:
        cpus = int(ray.cluster_resources().get("CPU", 2))
        concurrency = max(1, cpus // 2)
    parts = test_ds.map_batches(
        _SplitScorer,
        fn_constructor_kwargs={"bundles": shipped, "cfg": cfg},
        batch_size=batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=concurrency),
        num_cpus=1,
    )
    merged: _BatchPart | None = None
    for row in parts.iter_rows():
        part = pickle.loads(row["partial"])  # noqa: S301 - written by our own actors
        merged = part if merged is None else merged.merge(part)
    if merged is None:
        raise InputError("the held-out split has no rows: nothing to evaluate the models on")
    models = {n: _finish(n, merged.models[n], schemas[n], cfg, level) for n in names}
    sample = merged.sample.frame()
    return EvaluationResult(
        rows=merged.rows,
        models=models,
        sample=sample,
        sample_rows=len(sample),
        sample_seed=seed,
        drift_stats=merged.drift,
        seconds=round(time.time() - started, 3),
    )


def _check_columns(ds: Any, needed: list[str]) -> None:
    """Refuse a split without the target or sensitive column before any model is scored."""
    schema = ds.schema()
    names = list(getattr(schema, "names", []) or [])
    missing = [c for c in needed if names and c not in names]
    if missing:
        raise DataError(
            f"the held-out rows have no column {missing[0]!r} (their columns: {', '.join(names[:20])})"
        )


def _ship(name: str, bundle: Any) -> Any:
    """The model as the actors receive it: a BundleRef as is, a bundle through the object store."""
    import ray

    if isinstance(bundle, BundleRef):
        return bundle
    try:
        return ray.put(bundle)
    except (TypeError, pickle.PicklingError) as err:
        raise ValueError(
            f"model {name!r} cannot be sent to the scoring actors ({err}); register it and pass "
            "BundleRef('NAME:VERSION', store) so each actor loads it itself"
        ) from err


def _schema_of(bundle: Any) -> Any:
    if isinstance(bundle, BundleRef):
        return bundle.load().schema
    return bundle.schema
