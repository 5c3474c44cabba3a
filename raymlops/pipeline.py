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
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raymlops._progress import stage
from raymlops.config import METRIC_MODES, PipelineConfig, config_hash, resolve_metric
from raymlops.data._errors import DataValidationError
from raymlops.model import ModelBundle, TableSchema

if TYPE_CHECKING:
    from raymlops.evaluate._pipeline import HeldOut
    from raymlops.train import TrainedModel

__all__ = ["run_pipeline", "schema_changes", "validate_pipeline"]

log = logging.getLogger("raymlops")


def _connect_for(cfg: PipelineConfig, address: str | None = None) -> Any:
    from raymlops.cluster import connect

    return connect(address)


def validate_pipeline(cfg: PipelineConfig, *, address: str | None = None) -> dict[str, Any]:
    """Config and data checks only: nothing trains and nothing is written.

    Builtin datasets are checked in-process; files and URIs by the same distributed pass ``run``
    makes (Ray tasks read the rows; the driver merges statistics).
    """
    from raymlops.data.prepare import check_source

    if not cfg.data.source.startswith("builtin://"):
        _connect_for(cfg, address)
    checked = check_source(cfg)
    schema = checked.schema
    resolve_metric(cfg.tune, schema.task)
    return {
        "pipeline": cfg.name,
        "source": cfg.data.source,
        "rows": checked.profile.rows,
        "task": schema.task,
        "features": len(schema.features),
        "categorical": schema.categorical,
        "dropped": schema.dropped,
        "classes": schema.classes,
        "split": checked.split_sizes(),
        "split_by_class": checked.split.sizes,
        "fingerprint": checked.fingerprint,
        "warnings": checked.check.warnings,
        "ok": True,
    }


def _storage_path(cfg: PipelineConfig, store_uri: str) -> str:
    if cfg.storage_path:
        return cfg.storage_path if "://" in cfg.storage_path else os.path.abspath(cfg.storage_path)
    if "://" in store_uri and not store_uri.startswith("file://"):
        return store_uri.rstrip("/") + "/_experiments"
    return os.path.join(store_uri.removeprefix("file://"), "_experiments")


def _champion_bundle(store: Any, name: str) -> tuple[int, ModelBundle] | None:
    """The current champion, loaded (and its signature verified when keys are trusted)."""
    from raymlops.registry import ModelNotFoundError

    try:
        version = store.get(f"{name}@champion")
    except ModelNotFoundError:
        return None
    return version.version, ModelBundle.load(f"{name}:{version.version}", store.uri)


def schema_changes(old: TableSchema, new: TableSchema, columns: Collection[str] | None = None) -> list[str]:
    """What differs between the champion's schema and this run's data, by column.

    Args:
        columns: the data's columns: a champion feature still in the data that this pipeline file
            leaves out (``exclude``, ``features``) is the user's choice, not a change of the data.
    """
    changes = []
    if old.target != new.target or old.task != new.task:
        changes.append(f"target/task: {old.target} ({old.task}) -> {new.target} ({new.task})")
    gone = [c for c in old.features if c not in new.features and (columns is None or c not in columns)]
    added = [c for c in new.features if c not in old.features and c not in old.excluded]
    if gone:
        changes.append(f"feature(s) no longer present: {', '.join(gone)}")
    if added:
        changes.append(f"new feature(s): {', '.join(added)}")
    for c in old.features:
        if c in new.features:
            was, now = old.column_types.get(c), new.column_types.get(c)
            numeric = {"int", "float", "bool"}
            if was != now and not (was in numeric and now in numeric):
                changes.append(f"column {c!r} changed type: {was} -> {now}")
            if c in old.categorical and c in new.categorical:
                new_cats = sorted(set(new.categories.get(c, [])) - set(old.categories.get(c, [])))
                if new_cats:
                    changes.append(f"column {c!r} has new categories: {', '.join(map(str, new_cats[:10]))}")
    if old.task == "classification" and list(old.classes or []) != list(new.classes or []):
        changes.append(f"classes changed: {old.classes} -> {new.classes}")
    return changes


def _check_against_champion(
    cfg: PipelineConfig,
    champion: tuple[int, ModelBundle] | None,
    schema: TableSchema,
    columns: Collection[str],
) -> list[str]:
    if champion is None:
        return []
    changes = schema_changes(champion[1].schema, schema, columns)
    if changes and not cfg.validation.allow_schema_change:
        raise DataValidationError(
            cfg.data.source,
            [f"the data's schema differs from champion version {champion[0]}'s: {c}" for c in changes]
            + ["set validation.allow_schema_change: true to train on it anyway"],
        )
    return changes


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
    from raymlops.data.prepare import check_source, prepare
    from raymlops.registry import ModelStore, resolve_store_uri
    from raymlops.train import train_model

    started = time.time()
    store_obj = ModelStore(resolve_store_uri(store, cfg.store))
    stage("start Ray")
    cluster = _connect_for(cfg, address)
    log.info("connected to Ray: %s CPUs, %s GPUs, %s node(s)", cluster.cpus, cluster.gpus, cluster.nodes)

    stage("ingest")
    checked = check_source(cfg)  # one pass: the profile feeds the checks and the split plan
    stage("checks")
    schema = checked.schema
    for warning in checked.check.warnings:
        log.warning("%s", warning)
    champion_bundle = _champion_bundle(store_obj, cfg.name)
    stage("split")
    schema_changed = _check_against_champion(cfg, champion_bundle, schema, list(checked.profile.columns))
    stage("preprocess")
    prepared = prepare(cfg, checked)
    plan = prepared.plan
    data = prepared.training_data()
    metric, mode = resolve_metric(cfg.tune, schema.task)
    storage = _storage_path(cfg, store_obj.uri)

    trained_models: list[TrainedModel] = []
    bundles: dict[str, ModelBundle] = {}
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
        trained_models.append(trained)
        bundles[trained.name] = ModelBundle.from_estimator(trained.kind, trained.estimator, plan, schema)

    from raymlops.evaluate._pipeline import evaluate_held_out
    from raymlops.evaluate.gate import evaluate_gate

    def rank(t: TrainedModel) -> float:
        return t.val_metric if mode == "max" else -t.val_metric

    best_trained = max(trained_models, key=rank)
    best_bundle = bundles[best_trained.name]
    stage("evaluation")
    held_out = evaluate_held_out(
        prepared.rows("test"),
        schema,
        bundles,
        best_trained.name,
        champion_bundle,
        store_uri=store_obj.uri,
        name=cfg.name,
        gate_metric=cfg.gate.metric or metric,
        group_column=cfg.fairness.sensitive if cfg.fairness is not None else None,
        seed=cfg.data.split.seed,
        rows=prepared.checked.split.total("test"),
    )
    metrics: dict[str, Any] = dict(held_out.metrics[best_trained.name])
    metrics["interval"] = held_out.interval()
    if schema.task == "classification":
        metrics["confusion_matrix"] = held_out.confusion()
    if cfg.fairness is not None:
        metrics["fairness"] = held_out.fairness()

    stage("gate")
    champion = held_out.champion_summary(champion_bundle)
    gate = evaluate_gate(cfg.gate, metrics, metric=metric, champion=champion, fairness=cfg.fairness)

    split_sizes = checked.split_sizes()
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
            "rows": checked.profile.rows,
            "split": split_sizes,
            "split_by_class": checked.split.sizes,
            "fingerprint": checked.fingerprint,
            "warnings": checked.check.warnings,
            "dropped_columns": schema.dropped,
            "schema_changes": schema_changed,
            "evaluation_sample_rows": held_out.sample_rows,
            "test_rows_scored": held_out.result.rows,
        },
        "config_hash": config_hash(cfg),
        "pipeline_file": os.path.abspath(pipeline_file) if pipeline_file else None,
        "pipeline": cfg.model_dump(mode="json", by_alias=True),
        "candidates": [
            {"name": t.name, "kind": t.kind, "val_metric": t.val_metric, "metrics": held_out.metrics[t.name]}
            for t in trained_models
        ],
    }
    with tempfile.TemporaryDirectory(prefix="raymlops-version-") as tmp:
        folder = Path(tmp)
        fast_path = best_bundle.save(folder, check_X=_model_inputs(held_out.sample, schema, plan))
        if fast_path:
            metadata["fast_path"] = fast_path
        stage("report")
        governance = _governance(folder, cfg, best_bundle, prepared, held_out, metric, metadata)
        stage("registration")
        version = store_obj.register(cfg.name, folder, metadata)

    promoted, not_promoted_because = _promote(
        cfg, store_obj, version.version, gate, metrics, metric, champion
    )

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
                "metrics": held_out.metrics[t.name],
                "trials": t.trials,
                **({"details": t.extra} if t.extra else {}),
            }
            for t in trained_models
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
        "cluster": {
            "cpus": cluster.cpus,
            "gpus": cluster.gpus,
            "nodes": cluster.nodes,
            "driver_peak_rss_mb": _peak_rss_mb(),
        },
        "seconds": round(time.time() - started, 2),
    }


def _model_inputs(sample: Any, schema: TableSchema, plan: Any) -> Any:
    """The held-out sample as model input (the fast path is checked against it)."""
    import pyarrow as pa

    from raymlops.data.prepare import raw_features

    if sample is None or not len(sample):
        return None
    numeric, categorical = raw_features(
        pa.Table.from_pandas(sample[schema.features], preserve_index=False), schema
    )
    return plan.apply(numeric, categorical)


def _peak_rss_mb() -> float:
    """This process's peak resident memory: the driver's, which must not grow with the data."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _promote(
    cfg: PipelineConfig,
    store: Any,
    version: int,
    gate: Any,
    metrics: dict[str, Any],
    metric: str,
    champion: dict[str, Any] | None,
) -> tuple[str | None, str | None]:
    """Move the alias, re-checking under the alias lock that the champion is still the one gated against."""
    if not gate.passed:
        return None, "the gate refused it: " + "; ".join(gate.reasons)
    if not cfg.deploy.promote_to:
        return None, "deploy.promote_to is not set"
    gated_against = champion["version"] if champion else None

    def still_better(aliases: dict[str, int]) -> None:
        current = aliases.get("champion")
        if current == gated_against or current is None:
            return
        # another run promoted meanwhile: compare with what that version recorded at its own gate
        other = store.get(f"{cfg.name}:{current}").metadata.get("metrics", {}).get(metric)
        mine = metrics.get(metric)
        if other is None or mine is None:
            return
        better = (
            mine >= other + cfg.gate.beat_champion_by
            if METRIC_MODES[metric] == "max"
            else mine <= other - cfg.gate.beat_champion_by
        )
        if not better:
            raise PromotionRefused(
                f"version {current} became champion during this run with {metric}={other:.4f}; "
                f"this one has {mine:.4f}"
            )

    try:
        store.set_alias(cfg.name, cfg.deploy.promote_to, version, check=still_better)
    except PromotionRefused as err:
        return None, str(err)
    return cfg.deploy.promote_to, None


class PromotionRefused(Exception):
    """Raised inside the alias lock to abort a promotion that is no longer an improvement."""


REPORT_FILE = "report.html"
EXPLAIN_FILE = "explain.json"
_EXPLAIN_ROWS = 2000
_PD_ROWS = 500
_TOP_FEATURES = 5


def _governance(
    folder: Path,
    cfg: PipelineConfig,
    bundle: ModelBundle,
    prepared: Any,
    held_out: HeldOut,
    metric: str,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Explanations, reference statistics and the report, written into the version's staging folder.

    Explanations run on the bounded held-out sample (importance on up to 2000 rows, partial
    dependence on 500 for the top 5 features) so they cost seconds whatever the data size; the
    reference statistics come from one more distributed pass over the training rows.
    """
    import json

    import numpy as np

    from raymlops.evaluate.explain import explain_model
    from raymlops.evaluate.reference import build_reference_from_partials, reference_partial, write_reference
    from raymlops.evaluate.report import write_report
    from raymlops.monitor._drift import Thresholds, batch_stats, finalize, spec_from_reference

    started = time.time()
    schema = prepared.schema
    frame, y = held_out.explain_inputs(bundle)
    explanation = explain_model(
        bundle, frame, y, metric, top=_TOP_FEATURES, max_rows=_EXPLAIN_ROWS, pd_rows=_PD_ROWS
    )
    (folder / EXPLAIN_FILE).write_text(json.dumps(explanation, indent=1, default=str))
    split = prepared.checked.split
    partial = reference_partial(
        prepared.rows("train").union(prepared.rows("validation")),
        schema,
        rows=split.total("train") + split.total("validation"),
    )
    reference, ref_sample = build_reference_from_partials(
        partial,
        schema,
        held_out.prediction(),
        extra={
            "metric": metric,
            "held_out_metrics": {k: v for k, v in metadata["metrics"].items() if isinstance(v, (int, float))},
        },
    )
    write_reference(folder, reference, ref_sample)
    thresholds = Thresholds(
        psi_drift=cfg.monitor.psi_drift, psi_warning=cfg.monitor.psi_warning, pvalue=cfg.monitor.ks_pvalue
    )
    split_drift = finalize(
        batch_stats(held_out.sample, spec_from_reference(reference)), reference, ref_sample, thresholds
    )
    top = [
        {"feature": r["feature"], "importance": r["importance"]}
        for r in explanation["importance"]["features"][:_TOP_FEATURES]
    ]
    metadata["explain"] = {
        "metric": explanation["importance"]["metric"],
        "top_features": top,
        "file": EXPLAIN_FILE,
        "sample_rows": held_out.sample_rows,
        "sample_seed": held_out.result.sample_seed,
    }
    metadata["reference"] = {"file": "reference.json", "rows": reference["rows"]}
    metadata["split_drift"] = {"drifted_features": split_drift["drifted_features"]}
    residuals = None
    if schema.task == "regression" and len(frame):
        residuals = (np.asarray(y), np.asarray(bundle.score(frame).scores))
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
