"""``raymlops monitor``: new data (a batch or the serving request log) against a version's reference."""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raymlops.errors import ConfigError, DataError
from raymlops.evaluate.reference import load_reference
from raymlops.monitor._drift import Thresholds, batch_stats, finalize, merge_stats, spec_from_reference
from raymlops.monitor._feedback import KEY, LABEL, JoinPlan, evaluate_joined, join_batch, plan_join
from raymlops.monitor._scoring import PREDICTION_COLUMN, cached_bundle, labels_from_scores_of, score_batch

if TYPE_CHECKING:
    from raymlops.model import ModelBundle
    from raymlops.registry import ModelStore, ModelVersion

__all__ = ["DRIFT_EXIT_CODE", "monitor", "thresholds_for"]

log = logging.getLogger("raymlops")

DRIFT_EXIT_CODE = 3
VERSION_COLUMN = "model_version"
_BATCH_ROWS = 50_000


def thresholds_for(metadata: dict[str, Any], **overrides: float | None) -> Thresholds:
    """The version's ``monitor:`` settings from its pipeline file, with any command-line overrides."""
    cfg = (metadata.get("pipeline") or {}).get("monitor") or {}
    values: dict[str, float] = {}
    if "psi_drift" in cfg:
        values["psi_drift"] = float(cfg["psi_drift"])
    if "psi_warning" in cfg:
        values["psi_warning"] = float(cfg["psi_warning"])
    if "ks_pvalue" in cfg:
        values["pvalue"] = float(cfg["ks_pvalue"])
    values.update({k: float(v) for k, v in overrides.items() if v is not None})
    return Thresholds(**values)


def _stats_batch(
    batch: pd.DataFrame,
    *,
    spec: dict[str, Any],
    fraction: float,
    seed: int,
    mode: str | None,
    store_uri: str,
    model_ref: str,
    version: int,
    join_ref: Any = None,
) -> pd.DataFrame:
    """One Ray Data batch → one row holding its pickled partial statistics (and labeled rows).

    Features are measured on every row (they describe the traffic); logged predictions only on rows
    this version served, when the log says which version served a row. With labels, the batch's
    labeled rows travel back too, so drift and live metrics cost one pass over the data.
    """
    import ray

    plan: JoinPlan | None = ray.get(join_ref) if join_ref is not None else None
    predictions: Any = None
    unscorable = 0
    scores: np.ndarray | None = None
    valid: np.ndarray | None = None
    served: np.ndarray | None = None
    if VERSION_COLUMN in batch.columns:
        served = (
            pd.to_numeric(batch[VERSION_COLUMN], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            == version
        )
    if mode == "scored" or (plan is not None and plan.mode == "scored"):
        bundle = cached_bundle(store_uri, model_ref)
        scores, valid = score_batch(bundle, batch)
    if mode == "logged":
        predictions = batch[PREDICTION_COLUMN]
        if served is not None:
            predictions = predictions[served]
    elif mode == "scored" and scores is not None and valid is not None:
        predictions = labels_from_scores_of(cached_bundle(store_uri, model_ref), scores)
        unscorable = int((~valid).sum())
    stats = batch_stats(
        batch,
        spec,
        sample_fraction=fraction,
        seed=seed,
        predictions=predictions,
        prediction_source=mode,
        unscorable=unscorable,
    )
    joined = None
    if plan is not None:
        rows = served if plan.mode == "logged" else None
        joined = join_batch(batch, plan, scores=scores, valid=valid, rows=rows)
    return pd.DataFrame({"stats": [pickle.dumps({"stats": stats, "joined": joined})]})


def _trim(stats: dict[str, Any], sample_size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sample = stats.get("sample")
    if isinstance(sample, pd.DataFrame) and len(sample) > sample_size:
        stats["sample"] = sample.iloc[
            np.sort(rng.choice(len(sample), sample_size, replace=False))
        ].reset_index(drop=True)
    pred = stats.get("prediction") or {}
    if "sample" in pred and len(pred["sample"]) > sample_size:
        pred["sample"] = rng.choice(pred["sample"], sample_size, replace=False)


def _recommendation(name: str, version: int, metadata: dict[str, Any], result: dict[str, Any]) -> str | None:
    reasons = []
    if result["drifted_features"]:
        reasons.append(f"drift in {', '.join(result['drifted_features'])}")
    if result.get("prediction") and result["prediction"]["drift"]:
        reasons.append("prediction drift")
    if result["schema"]["skew"]:
        reasons.append("schema skew")
    perf = result.get("performance") or {}
    if perf.get("degraded"):
        reasons.append(f"live {perf['metric']} degraded")
    if not reasons:
        return None
    pipeline_file = metadata.get("pipeline_file")
    command = (
        f"raymlops run {pipeline_file}" if pipeline_file else f"raymlops run <the pipeline file of {name!r}>"
    )
    source = (metadata.get("data") or {}).get("source")
    return (
        f"{'; '.join(reasons)}: rerun pipeline {name!r} ({command}) on data that reflects the new "
        "distribution "
        f"(version {version} was trained on {source}); the gate compares the new candidate with the champion "
        "on its own held-out rows"
    )


def _default_report_path(name: str, version: int) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("raymlops-monitor") / f"{name}-v{version}-{stamp}.html"


@dataclass
class _Prepared:
    """What the driver knows before any row is read: the version, its reference and how to monitor."""

    version: ModelVersion
    metadata: dict[str, Any]
    reference: dict[str, Any]
    reference_sample: Any
    mode: str | None
    join: JoinPlan | None
    bundle: ModelBundle | None


def _prepare(
    store: ModelStore,
    ref: str,
    input_uri: str,
    *,
    labels: str | None,
    key: str | None,
    label_column: str | None,
) -> _Prepared:
    """Fetch and check the version, read the input's columns and the labels: all without Ray.

    A wrong flag, a version that fails its signature or may not be loaded (pickled without
    --allow-legacy-pickle) or input without the model's columns is refused in a second, not after
    Ray has started and counted the rows.
    """
    from raymlops.data.ingest import source_columns
    from raymlops.model import ModelBundle, check_pickle_free

    if labels and not key:
        raise ConfigError(
            "--labels needs --key COLUMN: the column that links a label to its logged prediction"
        )
    version, folder = store.fetch(ref)
    reference, reference_sample = load_reference(folder)
    columns = source_columns(input_uri)
    features = list(reference["features"])
    if not set(features) & set(columns):
        raise DataError(
            f"{input_uri} has none of the model's feature columns ({', '.join(features[:10])}"
            f"{'...' if len(features) > 10 else ''}); its columns are: {', '.join(columns[:20])}"
        )
    if PREDICTION_COLUMN in columns:
        mode: str | None = "logged"
    elif all(f in columns for f in features):
        mode = "scored"
    else:
        mode = None
    if mode == "scored":
        check_pickle_free(folder, name=version.ref)  # the workers will load the model
    join = bundle = None
    if labels and key:
        bundle = ModelBundle.from_dir(folder, version.metadata)
        join = plan_join(labels, key, label_column, bundle, columns)
    return _Prepared(version, version.metadata, reference, reference_sample, mode, join, bundle)


def monitor(
    ref: str,
    input_uri: str,
    *,
    store: str | None = None,
    address: str | None = None,
    labels: str | None = None,
    key: str | None = None,
    label_column: str | None = None,
    report: str | Path | None = None,
    write_report: bool = True,
    sample_size: int = 10_000,
    seed: int = 0,
    psi_drift: float | None = None,
    psi_warning: float | None = None,
    pvalue: float | None = None,
) -> dict[str, Any]:
    """Drift, schema skew, data quality and (with labels) live performance of ``input_uri`` for ``ref``.

    Args:
        ref: ``NAME`` (champion), ``NAME:VERSION`` or ``NAME@ALIAS``.
        input_uri: CSV/Parquet file or folder: a scoring batch, or the serving request log (feature
            columns plus ``prediction`` / ``proba_*`` columns, which are then used as logged).
        store: model store URI.
        address: Ray address (default: the running Ray, ``$RAY_ADDRESS``, else embedded local Ray).
        labels: labels that arrived later, to join on ``key`` for live metrics.
        key: the join column shared by the input and the labels.
        label_column: label column in ``labels`` (default the model's target column, else ``label``).
        report: where to write the HTML report (default ``raymlops-monitor/NAME-vV-TIME.html``).
        write_report: False to skip the HTML report.
        sample_size: rows sampled for KS tests (and the report's histograms).
        seed: sampling seed.
        psi_drift: override of the version's ``monitor.psi_drift``.
        psi_warning: override of ``monitor.psi_warning``.
        pvalue: override of ``monitor.ks_pvalue``.

    Returns:
        The JSON-ready result (what ``raymlops monitor --json`` prints).
    """
    import ray

    from raymlops.cluster import connect
    from raymlops.data.ingest import read_source
    from raymlops.registry import ModelStore

    started = time.time()
    store_obj = ModelStore(store)
    prep = _prepare(store_obj, ref, input_uri, labels=labels, key=key, label_column=label_column)
    version, metadata, reference, plan = prep.version, prep.metadata, prep.reference, prep.join
    model_ref = version.ref
    thresholds = thresholds_for(metadata, psi_drift=psi_drift, psi_warning=psi_warning, pvalue=pvalue)
    # Everything that can refuse the job has been checked: only now is Ray worth starting.
    if not ray.is_initialized():
        connect(address)
    ds = read_source(input_uri)
    columns = list(ds.schema().names)
    rows = ds.count()
    fraction = min(1.0, 1.2 * sample_size / max(rows, 1))
    udf: Any = _stats_batch  # Ray's stub types batch UDFs too narrowly for keyword arguments
    parts = ds.map_batches(
        udf,
        batch_format="pandas",
        batch_size=_BATCH_ROWS,
        fn_kwargs={
            "spec": spec_from_reference(reference),
            "fraction": fraction,
            "seed": seed,
            "mode": prep.mode,
            "store_uri": store_obj.uri,
            "model_ref": model_ref,
            "version": version.version,
            "join_ref": ray.put(plan) if plan is not None else None,
        },
    )
    merged: dict[str, Any] | None = None
    joined: list[pd.DataFrame] = []
    for row in parts.iter_rows():
        part = pickle.loads(row["stats"])  # noqa: S301 - written by our own tasks
        merged = merge_stats(merged, part["stats"])
        if part["joined"] is not None:
            joined.append(part["joined"])
    if merged is None:
        merged = batch_stats(pd.DataFrame(columns=columns), spec_from_reference(reference))
    _trim(merged, sample_size, seed)
    result = finalize(merged, reference, prep.reference_sample, thresholds)
    result = {
        "model": version.name,
        "version": version.version,
        "input": input_uri,
        **result,
    }
    if plan is not None and labels:
        frame = pd.concat(joined, ignore_index=True) if joined else pd.DataFrame(columns=[KEY, LABEL])
        result["performance"] = evaluate_joined(
            frame, plan, bundle=prep.bundle, metadata=metadata, labels_uri=labels
        )
    result["recommendation"] = _recommendation(version.name, version.version, metadata, result)
    result["ok"] = not (
        result["drift"]
        or result["schema"]["skew"]
        or (result.get("performance") or {}).get("degraded", False)
    )
    result["seconds"] = round(time.time() - started, 2)
    if write_report:
        from raymlops.evaluate.report import write_monitor_report

        path = Path(report) if report else _default_report_path(version.name, version.version)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_monitor_report(path, result, reference, prep.reference_sample, merged.get("sample"))
        result["report"] = str(path.resolve())
    log.info("monitor %s on %s: %d rows, drift=%s", model_ref, input_uri, rows, result["drift"])
    return result
