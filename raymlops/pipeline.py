"""The pipeline: ingest → validate → preprocess → search and train → evaluate → gate → register → promote.

Nothing is written to the model store until a model has been trained and evaluated; the version
itself is made visible atomically by the registry, so an interrupted run leaves no trace there.

Each version carries its governance record: held-out metrics with a bootstrap interval, fairness
per group of the sensitive column, permutation importance and partial dependence, reference
statistics for monitoring (``reference.json``) and a self-contained ``report.html``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from raymlops._progress import stage
from raymlops.cluster import connect
from raymlops.config import PipelineConfig, config_hash
from raymlops.data.fingerprint import fingerprint_frame
from raymlops.data.ingest import read_frame
from raymlops.data.preprocess import FeaturePipeline
from raymlops.data.schema import TableSchema
from raymlops.data.split import split_frame
from raymlops.data.validate import validate_training_frame
from raymlops.errors import InputError
from raymlops.evaluate.fairness import fairness_report
from raymlops.evaluate.gate import evaluate_gate
from raymlops.evaluate.metrics import bootstrap_interval, compute_metrics, confusion
from raymlops.model import ModelBundle
from raymlops.train import TrainedModel, TrainingData, train_model
from raymlops.train.tune import resolve_metric

__all__ = ["PreparedData", "prepare_data", "run_pipeline", "validate_pipeline"]

log = logging.getLogger("raymlops")


@dataclass
class PreparedData:
    frame: pd.DataFrame
    schema: TableSchema
    fingerprint: str
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame


def _excluded_columns(cfg: PipelineConfig) -> tuple[str, ...]:
    if cfg.fairness is not None and not cfg.fairness.use_as_feature:
        return (cfg.fairness.sensitive,)
    return ()


def _numpy_backed(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with Arrow-backed columns turned into plain numpy/object columns.

    Ray Data hands pandas ``double[pyarrow]`` / ``string[pyarrow]`` columns to ``to_pandas``; with
    those, ``pd.to_numeric(errors="coerce")`` marks unparseable strings as NaN that ``isna()`` does
    not see, and the checks then call a text column numeric (and constant). Plain dtypes avoid that.
    """
    columns: dict[str, Any] = {}
    changed = False
    for name in frame.columns:
        series = frame[name]
        if isinstance(series.dtype, pd.ArrowDtype):
            changed = True
            kind = series.dtype.pyarrow_dtype
            has_null = bool(series.isna().any())
            if pa.types.is_integer(kind) and not has_null:
                series = series.astype("int64")
            elif pa.types.is_boolean(kind) and not has_null:
                series = series.astype(bool)
            elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
                series = pd.Series(series.to_numpy(dtype="float64", na_value=np.nan), index=series.index)
            elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_boolean(kind):
                series = pd.Series(
                    series.to_numpy(dtype=object, na_value=None), index=series.index, dtype=object
                )
        columns[name] = series
    return pd.DataFrame(columns, index=frame.index) if changed else frame


def prepare_data(cfg: PipelineConfig) -> PreparedData:
    """Read, check and split the data; raises DataError/DataValidationError naming the problem."""
    stage("ingest")
    raw = read_frame(cfg.data.source)
    fingerprint = fingerprint_frame(raw)
    stage("checks")
    frame, schema = validate_training_frame(
        _numpy_backed(raw), cfg.data, cfg.validation, cfg.data.source, extra_excluded=_excluded_columns(cfg)
    )
    stage("split")
    train, val, test = split_frame(frame, schema, cfg.data.split)
    return PreparedData(frame, schema, fingerprint, train, val, test)


def validate_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Config and data checks only: nothing trains and nothing is written."""
    prepared = prepare_data(cfg)
    resolve_metric(cfg.tune, prepared.schema.task)
    return {
        "pipeline": cfg.name,
        "source": cfg.data.source,
        "rows": len(prepared.frame),
        "task": prepared.schema.task,
        "features": len(prepared.schema.features),
        "categorical": prepared.schema.categorical,
        "classes": prepared.schema.classes,
        "split": {"train": len(prepared.train), "validation": len(prepared.val), "test": len(prepared.test)},
        "fingerprint": prepared.fingerprint,
        "ok": True,
    }


def _encode_target(values: pd.Series, schema: TableSchema) -> np.ndarray:
    if schema.task == "classification":
        lookup = {c: i for i, c in enumerate(schema.classes or [])}
        return values.map(lookup).to_numpy(dtype=np.int64)
    return values.to_numpy(dtype=np.float32)


def _storage_path(cfg: PipelineConfig, store_uri: str) -> str:
    if cfg.storage_path:
        return cfg.storage_path if "://" in cfg.storage_path else os.path.abspath(cfg.storage_path)
    if "://" in store_uri and not store_uri.startswith("file://"):
        return store_uri.rstrip("/") + "/_experiments"
    return os.path.join(store_uri.removeprefix("file://"), "_experiments")


def _champion(store: Any, name: str, test: pd.DataFrame, schema: TableSchema) -> dict[str, Any] | None:
    """The current champion re-scored on this run's held-out rows (None when there is none)."""
    from raymlops.registry import ModelNotFoundError

    try:
        version = store.get(f"{name}@champion")
    except ModelNotFoundError:
        return None
    bundle = ModelBundle.load(f"{name}:{version.version}", store.uri)
    if bundle.schema.target != schema.target or bundle.schema.task != schema.task:
        return {"version": version.version, "metrics": {}, "note": "champion has another target or task"}
    if schema.task == "classification" and list(bundle.classes or []) != list(schema.classes or []):
        return {"version": version.version, "metrics": {}, "note": "champion was trained on other classes"}
    try:
        scored = bundle.score(test)
    except InputError as err:  # a feature the champion needs is gone from this data
        return {"version": version.version, "metrics": {}, "note": f"champion cannot score these rows: {err}"}
    if scored.n_rejected:
        return {"version": version.version, "metrics": {}, "note": "champion cannot score these rows"}
    scores = scored.scores
    y = _encode_champion_target(test[schema.target], bundle.schema)
    return {
        "version": version.version,
        "metrics": compute_metrics(schema.task, y, scores, len(bundle.classes or [])),
    }


def _encode_champion_target(values: pd.Series, schema: TableSchema) -> np.ndarray:
    return _encode_target(values, schema)


# [tracking] run_pipeline wraps the untracked run in an MLflow tracking session (off: a no-op).
def run_pipeline(
    cfg: PipelineConfig,
    *,
    store: str | None = None,
    address: str | None = None,
    resume: bool = False,
    pipeline_file: str | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline and return its summary (what ``raymlops run --json`` prints).

    With ``tracking.mlflow`` or ``$MLFLOW_TRACKING_URI`` set, the run is also logged to MLflow
    (see :mod:`raymlops.tracking`) and the summary gains a ``tracking`` entry; an unreachable
    tracking server stops the run before anything trains.

    Args: as :func:`_run_untracked`.
    """
    from raymlops.tracking import track_pipeline

    with track_pipeline(cfg, pipeline_file=pipeline_file) as tracking:
        summary = _run_untracked(
            cfg, store=store, address=address, resume=resume, pipeline_file=pipeline_file
        )
        summary.update(tracking.log_outcome(summary))
    return summary


def _run_untracked(
    cfg: PipelineConfig,
    *,
    store: str | None = None,
    address: str | None = None,
    resume: bool = False,
    pipeline_file: str | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline and return its summary, without MLflow tracking.

    Args:
        cfg: the validated pipeline file.
        store: model store URI (default ``cfg.store``, ``$RAYMLOPS_STORE``, ``./raymlops-store``).
        address: Ray address (default ``$RAY_ADDRESS``, else an embedded local Ray).
        resume: continue an interrupted search.
        pipeline_file: the pipeline file's path, recorded in the version so that ``raymlops monitor``
            can name the exact command to rerun when drift or degraded live metrics call for it.
    """
    from raymlops.registry import ModelStore, resolve_store_uri

    started = time.time()
    store_obj = ModelStore(resolve_store_uri(store, cfg.store))
    stage("start Ray")
    cluster = connect(address)
    log.info("connected to Ray: %s CPUs, %s GPUs, %s node(s)", cluster.cpus, cluster.gpus, cluster.nodes)

    prepared = prepare_data(cfg)
    schema = prepared.schema
    stage("preprocess")
    features = FeaturePipeline(cfg.preprocess).fit(prepared.train, schema)
    plan = features.to_plan()
    data = TrainingData.from_arrays(
        features.transform(prepared.train),
        _encode_target(prepared.train[schema.target], schema),
        features.transform(prepared.val),
        _encode_target(prepared.val[schema.target], schema),
        schema.task,
        schema.classes,
        plan.feature_names,
    )
    X_test = features.transform(prepared.test)
    y_test = _encode_target(prepared.test[schema.target], schema)
    metric, mode = resolve_metric(cfg.tune, schema.task)
    storage = _storage_path(cfg, store_obj.uri)

    results = []
    for model_cfg in cfg.models:
        stage(f"search {model_cfg.name}")
        trained = train_model(
            model_cfg,
            cfg.tune,
            data,
            storage_path=storage,
            experiment=f"{cfg.name}__{model_cfg.name}",
            resume=resume,
            base_dir=cfg.base_dir,
        )
        bundle = ModelBundle.from_estimator(trained.kind, trained.estimator, plan, schema)
        scores = bundle.scores(X_test)
        test_metrics = compute_metrics(schema.task, y_test, scores, data.n_classes)
        results.append((trained, bundle, scores, test_metrics))

    def rank(item: tuple[TrainedModel, Any, Any, dict[str, float]]) -> float:
        return item[0].val_metric if mode == "max" else -item[0].val_metric

    stage("evaluation")
    best_trained, best_bundle, best_scores, best_metrics = max(results, key=rank)
    metrics: dict[str, Any] = dict(best_metrics)
    # The interval is for the metric the gate compares with the champion (gate.metric, else tune.metric).
    gate_metric = cfg.gate.metric or metric
    metrics["interval"] = bootstrap_interval(schema.task, y_test, best_scores, gate_metric, data.n_classes)
    if schema.task == "classification":
        metrics["confusion_matrix"] = confusion(
            y_test, np.asarray(best_scores).argmax(axis=1), data.n_classes
        )

    if cfg.fairness is not None:
        metrics["fairness"] = fairness_report(
            prepared.test[cfg.fairness.sensitive].to_numpy(),
            y_test,
            np.asarray(best_scores),
            schema.task,
            schema.classes,
            column=cfg.fairness.sensitive,
        )

    stage("gate")
    champion = _champion(store_obj, cfg.name, prepared.test, schema)
    gate = evaluate_gate(cfg.gate, metrics, metric=metric, champion=champion, fairness=cfg.fairness)

    metadata = {
        **best_trained.metadata,
        "kind": best_trained.kind,
        "model": best_trained.name,
        "task": schema.task,
        "metric": metric,
        "metrics": metrics,
        "params": best_trained.best_params,
        "workers": best_trained.workers,
        "gate": gate.to_dict(),
        "champion_at_gate": champion,
        "data": {
            "source": cfg.data.source,
            "rows": len(prepared.frame),
            "split": {
                "train": len(prepared.train),
                "validation": len(prepared.val),
                "test": len(prepared.test),
            },
            "fingerprint": prepared.fingerprint,
        },
        "config_hash": config_hash(cfg),
        "pipeline_file": os.path.abspath(pipeline_file) if pipeline_file else None,
        "pipeline": cfg.model_dump(mode="json", by_alias=True),
        "candidates": [
            {"name": t.name, "kind": t.kind, "val_metric": t.val_metric, "metrics": m}
            for t, _, _, m in results
        ],
    }
    with tempfile.TemporaryDirectory(prefix="raymlops-version-") as tmp:
        folder = Path(tmp)
        fast_path = best_bundle.save(folder, check_X=X_test)
        if fast_path:
            metadata["fast_path"] = fast_path
        stage("report")
        governance = _governance(
            folder, cfg, best_bundle, prepared, y_test, np.asarray(best_scores), metric, metadata
        )
        stage("registration")
        version = store_obj.register(cfg.name, folder, metadata)

    promoted = None
    if gate.passed and cfg.deploy.promote_to:
        store_obj.set_alias(cfg.name, cfg.deploy.promote_to, version.version)
        promoted = cfg.deploy.promote_to
    if promoted:
        not_promoted_because = None
    elif not gate.passed:
        not_promoted_because = "the gate refused it: " + "; ".join(gate.reasons)
    else:
        not_promoted_because = "deploy.promote_to is not set"

    return {
        "pipeline": cfg.name,
        "store": store_obj.uri,
        "models": [
            {
                "name": t.name,
                "kind": t.kind,
                "workers": t.workers,
                "best_params": t.best_params,
                "val_metric": t.val_metric,
                "metrics": m,
                "trials": t.trials,
                **({"details": t.extra} if t.extra else {}),
            }
            for t, _, _, m in results
        ],
        "selected": best_trained.name,
        "metric": metric,
        "metrics": {k: v for k, v in metrics.items() if k != "confusion_matrix"},
        "version": version.version,
        "gate": {"passed": gate.passed, "reasons": gate.reasons},
        "champion": champion,
        "promoted": promoted,
        "not_promoted_because": not_promoted_because,
        "explain": governance["explain"],
        "report": version.uri.rstrip("/") + "/" + REPORT_FILE,
        "data": metadata["data"],
        "cluster": {"cpus": cluster.cpus, "gpus": cluster.gpus, "nodes": cluster.nodes},
        "seconds": round(time.time() - started, 2),
    }


REPORT_FILE = "report.html"
EXPLAIN_FILE = "explain.json"
_EXPLAIN_ROWS = 2000
_PD_ROWS = 500
_TOP_FEATURES = 5


def _governance(
    folder: Path,
    cfg: PipelineConfig,
    bundle: ModelBundle,
    prepared: PreparedData,
    y_test: np.ndarray,
    scores: np.ndarray,
    metric: str,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Explanations, reference statistics and the report, written into the version's staging folder.

    Explanations run on a sample of held-out rows (importance on up to 2000, partial dependence on
    500 for the top 5 features) so they cost seconds, not minutes, whatever the data size.
    """
    import json

    from raymlops.evaluate.explain import explain_model
    from raymlops.evaluate.reference import build_reference, write_reference
    from raymlops.evaluate.report import write_report
    from raymlops.monitor._drift import Thresholds, batch_stats, finalize, spec_from_reference

    started = time.time()
    schema = prepared.schema
    explanation = explain_model(
        bundle, prepared.test, y_test, metric, top=_TOP_FEATURES, max_rows=_EXPLAIN_ROWS, pd_rows=_PD_ROWS
    )
    (folder / EXPLAIN_FILE).write_text(json.dumps(explanation, indent=1, default=str))
    training_rows = pd.concat([prepared.train, prepared.val], ignore_index=True)
    reference, sample = build_reference(
        training_rows,
        schema,
        scores,
        extra={
            "metric": metric,
            "held_out_metrics": {k: v for k, v in metadata["metrics"].items() if isinstance(v, (int, float))},
        },
    )
    write_reference(folder, reference, sample)
    thresholds = Thresholds(
        psi_drift=cfg.monitor.psi_drift, psi_warning=cfg.monitor.psi_warning, pvalue=cfg.monitor.ks_pvalue
    )
    split_drift = finalize(
        batch_stats(prepared.test, spec_from_reference(reference)), reference, sample, thresholds
    )
    top = [
        {"feature": r["feature"], "importance": r["importance"]}
        for r in explanation["importance"]["features"][:_TOP_FEATURES]
    ]
    metadata["explain"] = {
        "metric": explanation["importance"]["metric"],
        "top_features": top,
        "file": EXPLAIN_FILE,
    }
    metadata["reference"] = {"file": "reference.json", "rows": reference["rows"]}
    metadata["split_drift"] = {"drifted_features": split_drift["drifted_features"]}
    residuals = (y_test, scores) if schema.task == "regression" else None
    write_report(
        folder / REPORT_FILE,
        cfg.name,
        metadata,
        bundle,
        prepared,
        explanation=explanation,
        reference=reference,
        split_drift=split_drift,
        residuals=residuals,
    )
    log.info("explanations, reference and report took %.1f s", time.time() - started)
    return {"explain": top}
