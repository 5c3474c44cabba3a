"""The feedback loop: labels that arrive later, joined with logged predictions, give live metrics.

Labels are broadcast to the Ray Data tasks that already read the monitored input for the drift
statistics: each task keeps the rows whose key has a label, with their logged (or freshly scored)
class probabilities, in the same single pass over the data. Labels (a key and a value per row) are
small next to request logs, which can be any size; Ray's own hash-shuffle join would also need
``polars``, which raymlops does not install.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from raymlops.config import METRIC_MODES
from raymlops.errors import DataError
from raymlops.evaluate.metrics import compute_metrics
from raymlops.evaluate.reference import category_key
from raymlops.monitor._scoring import PREDICTION_COLUMN, proba_columns

__all__ = ["MIN_LABELED_ROWS", "JoinPlan", "evaluate_joined", "join_batch", "plan_join", "read_table"]

MIN_LABELED_ROWS = 30
KEY = "__key__"
LABEL = "__label__"


@dataclass
class JoinPlan:
    """How to join one monitored input with its labels.

    Attributes:
        key: the input's key column.
        label_column: the label column in the labels table.
        mode: "logged" (scores come from the input) or "scored" (the model scores the features).
        score_cols: the columns holding scores in the joined rows.
        labels: ``__key__`` / ``__label__`` frame, keys and labels as text, one row per key.
        labels_rows: rows in the labels table before de-duplication.
    """

    key: str
    label_column: str
    mode: str
    score_cols: list[str]
    labels: pd.DataFrame
    labels_rows: int


def read_table(uri: str) -> pd.DataFrame:
    """A whole CSV/Parquet file or folder read on the driver with pyarrow (for small tables like labels)."""
    import pyarrow.dataset as pads

    from raymlops.data._errors import DataError
    from raymlops.data.ingest import resolve_filesystem

    fs, path = resolve_filesystem(uri)
    lowered = path.lower()
    fmt = "csv" if lowered.endswith(".csv") else "parquet"
    if not lowered.endswith((".csv", ".parquet", ".pq")):
        import pyarrow.fs as pafs

        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        names = [i.base_name.lower() for i in infos if i.type == pafs.FileType.File]
        fmt = (
            "csv"
            if names and all(n.endswith(".csv") for n in names if not n.startswith((".", "_")))
            else "parquet"
        )
    try:
        return pads.dataset(path, format=fmt, filesystem=fs).to_table().to_pandas()
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {uri}: {err}") from None


def plan_join(
    labels_uri: str, key: str, label_column: str | None, bundle: Any, log_columns: list[str]
) -> JoinPlan:
    """Check both tables have what the join needs and decide where the scores come from.

    Raises:
        ValueError: a column is missing, naming it and the columns that exist.
    """
    table = read_table(labels_uri)
    names = [str(c) for c in table.columns]
    if key not in names:
        raise DataError(f"labels {labels_uri} have no key column {key!r}; columns are: {', '.join(names)}")
    if label_column is None:
        label_column = next((c for c in (bundle.schema.target, "label") if c in names), None)
        if label_column is None:
            raise DataError(
                f"labels {labels_uri} have no label column {bundle.schema.target!r} (the model's target) or "
                f"'label'; name it with --label-column; columns are: {', '.join(names)}"
            )
    elif label_column not in names:
        raise DataError(
            f"labels {labels_uri} have no column {label_column!r}; columns are: {', '.join(names)}"
        )
    if key not in log_columns:
        raise DataError(
            f"the monitored input has no key column {key!r}; columns are: {', '.join(log_columns)}"
        )
    task = bundle.schema.task
    probas = proba_columns(bundle.classes)
    if task == "classification" and probas and all(c in log_columns for c in probas):
        mode, score_cols = "logged", probas
    elif task == "regression" and PREDICTION_COLUMN in log_columns:
        mode, score_cols = "logged", [PREDICTION_COLUMN]
    elif not bundle.missing_columns(log_columns):
        mode, score_cols = "scored", probas if task == "classification" else [PREDICTION_COLUMN]
    else:
        raise DataError(
            "the monitored input has neither logged scores ("
            + (", ".join(probas) if task == "classification" else PREDICTION_COLUMN)
            + f") nor all feature columns (missing {', '.join(bundle.missing_columns(log_columns))}), "
            "so its predictions cannot be compared with the labels"
        )
    labels = pd.DataFrame({KEY: table[key].map(category_key), LABEL: table[label_column].map(category_key)})
    return JoinPlan(
        key=key,
        label_column=label_column,
        mode=mode,
        score_cols=score_cols,
        labels=labels.drop_duplicates(KEY, keep="last").reset_index(drop=True),
        labels_rows=len(labels),
    )


def join_batch(
    batch: pd.DataFrame,
    plan: JoinPlan,
    *,
    scores: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> pd.DataFrame:
    """The batch's labeled rows: key, label and one column per score.

    Args:
        batch: a batch of the monitored input.
        plan: from :func:`plan_join`.
        scores: the model's scores for the ``valid`` rows (scored mode).
        valid: mask of the rows the model could score (scored mode).
        rows: mask of the rows to keep at all (e.g. the rows this version served), default all.
    """
    n = len(batch)
    if plan.mode == "scored":
        full = np.full((n, len(plan.score_cols)), np.nan)
        if scores is not None and valid is not None and len(scores):
            full[valid] = np.asarray(scores, dtype="float64").reshape(len(scores), -1)
    else:
        full = np.column_stack(
            [
                pd.to_numeric(batch[c], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
                for c in plan.score_cols
            ]
        )
    left = pd.DataFrame(full, columns=plan.score_cols)
    left.insert(0, KEY, batch[plan.key].map(category_key).to_numpy())
    if rows is not None:
        left = left.loc[rows]
    return left.merge(plan.labels, on=KEY, how="inner")


def _encode(values: pd.Series, bundle: Any) -> tuple[np.ndarray, np.ndarray]:
    """Encoded labels and the mask of rows whose label the model knows."""
    if bundle.schema.task == "classification":
        lookup = {category_key(c): i for i, c in enumerate(bundle.classes or [])}
        # Labels read from CSV may come back as 1.0 for class 1: accept the integral float spelling too.
        for c, i in list(lookup.items()):
            with contextlib.suppress(ValueError):
                lookup.setdefault(category_key(float(c)), i)
        codes = values.map(lambda v: lookup.get(v, -1)).to_numpy(dtype=np.int64)
        return codes, codes >= 0
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return numeric, np.isfinite(numeric)


def evaluate_joined(
    joined: pd.DataFrame, plan: JoinPlan, *, bundle: Any, metadata: dict[str, Any], labels_uri: str
) -> dict[str, Any]:
    """Live metrics on the joined rows against the version's held-out metrics.

    Live performance counts as degraded when the selection metric falls outside the held-out
    bootstrap interval (on the bad side), with at least :data:`MIN_LABELED_ROWS` labeled rows;
    without an interval, when it is more than 5% worse.
    """
    task = bundle.schema.task
    duplicate_predictions = int(joined.duplicated(KEY).sum()) if len(joined) else 0
    joined = joined.drop_duplicates(KEY, keep="last").reset_index(drop=True)
    if len(joined):
        y, known = _encode(joined[LABEL], bundle)
        scores = joined[plan.score_cols].to_numpy(dtype="float64")
        finite = np.isfinite(scores).all(axis=1)
    else:
        y, known = np.zeros(0), np.zeros(0, dtype=bool)
        scores, finite = np.zeros((0, len(plan.score_cols))), np.zeros(0, dtype=bool)
    use = known & finite
    if task == "regression":
        scores = scores.reshape(-1)
    metric = metadata.get("metric") or ("accuracy" if task == "classification" else "rmse")
    held_out = {k: v for k, v in (metadata.get("metrics") or {}).items() if isinstance(v, (int, float))}
    out: dict[str, Any] = {
        "labels": labels_uri,
        "key": plan.key,
        "label_column": plan.label_column,
        "source": plan.mode,
        "labeled_rows": int(use.sum()),
        "labels_rows": plan.labels_rows,
        "unknown_labels": int((~known).sum()),
        "unscorable": int((known & ~finite).sum()),
        "duplicate_label_keys": plan.labels_rows - len(plan.labels),
        "duplicate_prediction_keys": duplicate_predictions,
        "metric": metric,
        "held_out": held_out,
        "live": {},
        "degraded": False,
    }
    if use.sum() == 0:
        out["verdict"] = "no logged prediction has a label yet: nothing to compare"
        return out
    live = compute_metrics(task, y[use], scores[use], len(bundle.classes or []))
    out["live"] = live
    out["comparison"] = [
        {
            "metric": m,
            "held_out": held_out.get(m),
            "live": v,
            "change": (v - held_out[m]) if m in held_out else None,
        }
        for m, v in live.items()
    ]
    live_value, ref_value = live.get(metric), held_out.get(metric)
    if live_value is None or ref_value is None:
        out["verdict"] = f"{metric} is not available on both sides; see the comparison table"
        return out
    mode_max = METRIC_MODES.get(metric, "max") == "max"
    interval = (metadata.get("metrics") or {}).get("interval") or {}
    if interval.get("metric") == metric and interval.get("low") is not None:
        bound = interval["low"] if mode_max else interval["high"]
        level = int(100 * interval.get("level", 0.95))
        basis = f"the held-out {level}% interval [{interval['low']:.4f}, {interval['high']:.4f}]"
    else:
        bound = ref_value - 0.05 * abs(ref_value) if mode_max else ref_value + 0.05 * abs(ref_value)
        basis = f"5% of the held-out {ref_value:.4f}"
    worse = live_value < bound if mode_max else live_value > bound
    enough = use.sum() >= MIN_LABELED_ROWS
    out["threshold"] = bound
    out["degraded"] = bool(worse and enough)
    if worse and not enough:
        out["verdict"] = (
            f"live {metric} {live_value:.4f} is outside {basis}, but only {int(use.sum())} labeled rows "
            f"(< {MIN_LABELED_ROWS}): wait for more labels"
        )
    elif worse:
        out["verdict"] = (
            f"degraded: live {metric} {live_value:.4f} vs held-out {ref_value:.4f}, outside {basis}"
        )
    else:
        out["verdict"] = f"ok: live {metric} {live_value:.4f} vs held-out {ref_value:.4f} (within {basis})"
    return out
