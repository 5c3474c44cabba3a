"""The pipeline: ingest → validate → preprocess → search and train → evaluate → gate → register → promote.

Nothing is written to the model store until a model has been trained and evaluated; the version
itself is made visible atomically by the registry, so an interrupted run leaves no trace there.
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

from raymlops.bundle import ModelBundle
from raymlops.cluster import connect
from raymlops.config import PipelineConfig, config_hash
from raymlops.data.fingerprint import fingerprint_frame
from raymlops.data.ingest import read_frame
from raymlops.data.preprocess import FeaturePipeline
from raymlops.data.schema import TableSchema
from raymlops.data.split import split_frame
from raymlops.data.validate import validate_training_frame
from raymlops.evaluate.gate import evaluate_gate
from raymlops.evaluate.metrics import bootstrap_interval, compute_metrics, confusion
from raymlops.train.base import TrainedModel, TrainingData
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


def prepare_data(cfg: PipelineConfig) -> PreparedData:
    """Read, check and split the data; raises DataError/DataValidationError naming the problem."""
    raw = read_frame(cfg.data.source)
    frame, schema = validate_training_frame(
        raw, cfg.data, cfg.validation, cfg.data.source, extra_excluded=_excluded_columns(cfg)
    )
    fingerprint = fingerprint_frame(raw)
    train, val, test = split_frame(frame, schema, cfg.data.split)
    return PreparedData(frame, schema, fingerprint, train, val, test)


def validate_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Config and data checks only: nothing trains and nothing is written."""
    prepared = prepare_data(cfg)
    for model in cfg.models:
        resolve_metric(cfg.tune, prepared.schema.task)
        model.typed_params()
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


def _train_one(cfg: PipelineConfig, model_cfg: Any, data: TrainingData, storage: str, resume: bool) -> TrainedModel:
    experiment = f"{cfg.name}__{model_cfg.name}"
    if model_cfg.kind == "random_forest":
        from raymlops.train.forest import tune_forest

        return tune_forest(model_cfg, cfg.tune, data, storage_path=storage, experiment=experiment, resume=resume)
    from raymlops.train.keras import tune_keras

    return tune_keras(model_cfg, cfg.tune, data, storage_path=storage, experiment=experiment, resume=resume)


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
    check = bundle.check_rows(test)
    if check.n_rejected:
        return {"version": version.version, "metrics": {}, "note": "champion cannot score these rows"}
    scores = bundle.scores(bundle.transform(check.frame))
    y = _encode_champion_target(test[schema.target], bundle.schema)
    return {
        "version": version.version,
        "metrics": compute_metrics(schema.task, y, scores, len(bundle.classes or [])),
    }


def _encode_champion_target(values: pd.Series, schema: TableSchema) -> np.ndarray:
    return _encode_target(values, schema)


def run_pipeline(
    cfg: PipelineConfig,
    *,
    store: str | None = None,
    address: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the whole pipeline and return its summary (what ``raymlops run --json`` prints)."""
    from raymlops.registry import ModelStore

    started = time.time()
    store_obj = ModelStore(store or cfg.store)
    cluster = connect(address)
    log.info("connected to Ray: %s CPUs, %s GPUs, %s node(s)", cluster.cpus, cluster.gpus, cluster.nodes)

    prepared = prepare_data(cfg)
    schema = prepared.schema
    features = FeaturePipeline(cfg.preprocess).fit(prepared.train, schema)
    data = TrainingData(
        X_train=features.transform(prepared.train),
        y_train=_encode_target(prepared.train[schema.target], schema),
        X_val=features.transform(prepared.val),
        y_val=_encode_target(prepared.val[schema.target], schema),
        task=schema.task,
        classes=schema.classes,
        feature_names=features.feature_names_,
    )
    X_test = features.transform(prepared.test)
    y_test = _encode_target(prepared.test[schema.target], schema)
    metric, mode = resolve_metric(cfg.tune, schema.task)
    storage = _storage_path(cfg, store_obj.uri)

    results = []
    for model_cfg in cfg.models:
        trained = _train_one(cfg, model_cfg, data, storage, resume)
        bundle = ModelBundle(trained.kind, trained.estimator, features, schema)
        scores = bundle.scores(X_test)
        test_metrics = compute_metrics(schema.task, y_test, scores, data.n_classes)
        results.append((trained, bundle, scores, test_metrics))

    def rank(item: tuple[TrainedModel, Any, Any, dict[str, float]]) -> float:
        return item[0].val_metric if mode == "max" else -item[0].val_metric

    best_trained, best_bundle, best_scores, best_metrics = max(results, key=rank)
    metrics: dict[str, Any] = dict(best_metrics)
    metrics["interval"] = bootstrap_interval(schema.task, y_test, best_scores, metric, data.n_classes)
    if schema.task == "classification":
        metrics["confusion_matrix"] = confusion(y_test, np.asarray(best_scores).argmax(axis=1), data.n_classes)

    champion = _champion(store_obj, cfg.name, prepared.test, schema)
    gate = evaluate_gate(cfg.gate, metrics, metric=metric, champion=champion)

    metadata = {
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
            "split": {"train": len(prepared.train), "validation": len(prepared.val), "test": len(prepared.test)},
            "fingerprint": prepared.fingerprint,
        },
        "config_hash": config_hash(cfg),
        "pipeline": cfg.model_dump(mode="json", by_alias=True),
        "candidates": [
            {"name": t.name, "kind": t.kind, "val_metric": t.val_metric, "metrics": m} for t, _, _, m in results
        ],
    }
    with tempfile.TemporaryDirectory(prefix="raymlops-version-") as tmp:
        folder = Path(tmp)
        best_bundle.save(folder)
        from raymlops.evaluate.report import write_report

        write_report(folder / "report.html", cfg.name, metadata, best_bundle, prepared)
        version = store_obj.register(cfg.name, folder, metadata)

    promoted = None
    if gate.passed and cfg.deploy.promote_to:
        store_obj.set_alias(cfg.name, cfg.deploy.promote_to, version.version)
        promoted = cfg.deploy.promote_to

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
        "data": metadata["data"],
        "cluster": {"cpus": cluster.cpus, "gpus": cluster.gpus, "nodes": cluster.nodes},
        "seconds": round(time.time() - started, 2),
    }
