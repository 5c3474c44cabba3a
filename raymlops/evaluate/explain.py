"""Model-agnostic explanations on raw feature columns: permutation importance and partial dependence.

Both work through :meth:`~raymlops.model.ModelBundle.score` (check → transform → scores), so they explain
what a user feeds the model, whatever the model kind: a one-hot-encoded category is permuted as one
column, not as ten unrelated indicator columns, and a Keras network is explained exactly like a forest.

Every permuted or gridded copy of the sample is stacked into one large frame and scored in a few
calls: one call over 100k rows costs far less than a thousand calls over 100 rows (model start-up
and per-call overheads dominate small batches, especially for Keras and joblib-parallel forests).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from raymlops.config import METRIC_MODES
from raymlops.evaluate.metrics import metric_value

__all__ = [
    "explain_model",
    "importance_figure",
    "partial_dependence",
    "partial_dependence_figure",
    "permutation_importance",
]

_CHUNK_ROWS = 200_000


def _clean_sample(
    bundle: Any, frame: pd.DataFrame, max_rows: int, seed: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """The scorable rows of ``frame`` (at most ``max_rows``, drawn at random) and their positions."""
    check = bundle.check(frame)
    positions = np.flatnonzero(check.valid)
    if len(positions) > max_rows:
        rng = np.random.default_rng(seed)
        positions = np.sort(rng.choice(positions, size=max_rows, replace=False))
    clean = pd.DataFrame(check.columns(bundle.schema, positions))
    return clean, positions


def _score_copies(bundle: Any, copies: list[pd.DataFrame]) -> list[np.ndarray]:
    """Score many same-shaped frames with few model calls; returns one score array per frame."""
    out: list[np.ndarray] = []
    batch: list[pd.DataFrame] = []
    rows = 0

    def flush() -> None:
        nonlocal batch, rows
        if not batch:
            return
        stacked = pd.concat(batch, ignore_index=True)
        scores = np.asarray(bundle.score(stacked).scores)
        start = 0
        for part in batch:
            out.append(scores[start : start + len(part)])
            start += len(part)
        batch, rows = [], 0

    for copy in copies:
        batch.append(copy)
        rows += len(copy)
        if rows >= _CHUNK_ROWS:
            flush()
    flush()
    return out


def permutation_importance(
    bundle: Any,
    frame: pd.DataFrame,
    y: np.ndarray,
    metric: str,
    *,
    n_repeats: int = 3,
    max_rows: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """How much the held-out metric drops when one raw feature column is shuffled.

    Args:
        bundle: the model to explain.
        frame: held-out rows with the raw feature columns.
        y: encoded targets for ``frame`` (class indices or values), row-aligned.
        metric: the metric to measure (the pipeline's selection metric).
        n_repeats: shuffles per feature; the spread over repeats is reported as ``std``.
        max_rows: rows sampled from ``frame``.
        seed: makes the sample and the shuffles reproducible.

    Returns:
        ``{"metric", "baseline", "rows", "repeats", "features": [{"feature", "importance", "std"}]}``
        sorted by importance, where importance is the loss in ``metric`` (positive: the model relies
        on the feature), whichever direction the metric improves in.
    """
    task = bundle.schema.task
    n_classes = len(bundle.classes or [])
    clean, positions = _clean_sample(bundle, frame, max_rows, seed)
    y_sample = np.asarray(y)[positions]
    fallback = "accuracy" if task == "classification" else "rmse"
    if metric not in METRIC_MODES:
        metric = fallback
    baseline_scores = np.asarray(bundle.score(clean).scores)
    try:
        baseline = metric_value(task, metric, y_sample, baseline_scores, n_classes)
    except (KeyError, ValueError):  # e.g. ROC AUC on a sample that lacks a class
        metric = fallback
        baseline = metric_value(task, metric, y_sample, baseline_scores, n_classes)
    sign = 1.0 if METRIC_MODES[metric] == "max" else -1.0
    rng = np.random.default_rng(seed)
    jobs: list[str] = []
    copies: list[pd.DataFrame] = []
    for feature in bundle.schema.features:
        for _ in range(n_repeats):
            copy = clean.copy()
            copy[feature] = clean[feature].to_numpy()[rng.permutation(len(clean))]
            copies.append(copy)
            jobs.append(feature)
    scored = _score_copies(bundle, copies) if len(clean) else []
    drops: dict[str, list[float]] = {f: [] for f in bundle.schema.features}
    for feature, scores in zip(jobs, scored, strict=True):
        value = metric_value(task, metric, y_sample, scores, n_classes)
        drops[feature].append(sign * (baseline - value))
    rows: list[dict[str, Any]] = [
        {
            "feature": f,
            "importance": float(np.mean(d)) if d else 0.0,
            "std": float(np.std(d)) if d else 0.0,
        }
        for f, d in drops.items()
    ]
    rows.sort(key=lambda r: r["importance"], reverse=True)
    return {
        "metric": metric,
        "baseline": baseline,
        "rows": len(clean),
        "repeats": n_repeats,
        "features": rows,
    }


def _grid(bundle: Any, clean: pd.DataFrame, feature: str, points: int) -> list[Any]:
    if feature in bundle.schema.categorical:
        counts = clean[feature].value_counts()
        known = [str(c) for c in bundle.schema.categories.get(feature, [])]
        ordered = [c for c in counts.index.astype(str) if not known or c in known]
        return ordered[:points]
    values = clean[feature].astype("float64").to_numpy()
    grid = np.unique(np.quantile(values, np.linspace(0.05, 0.95, points)))
    return [float(v) for v in grid]


def partial_dependence(
    bundle: Any,
    frame: pd.DataFrame,
    features: list[str],
    *,
    grid_points: int = 20,
    max_rows: int = 500,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Average model output as one raw feature is set to each grid value for every sampled row.

    Numeric features use quantiles between the 5th and 95th percentile (where data exist); categorical
    ones use their most frequent categories.

    Returns:
        one entry per feature: ``{"feature", "kind", "grid", "average": {output: [...]}}`` where an
        output is a class label (mean probability) or ``"prediction"`` (regression).
    """
    clean, _ = _clean_sample(bundle, frame, max_rows, seed)
    if not len(clean):
        return []
    grids = {f: _grid(bundle, clean, f, grid_points) for f in features}
    copies: list[pd.DataFrame] = []
    for feature in features:
        for value in grids[feature]:
            copy = clean.copy()
            copy[feature] = value
            copies.append(copy)
    scored = iter(_score_copies(bundle, copies))
    out = []
    for feature in features:
        means = [np.asarray(next(scored)).mean(axis=0) for _ in grids[feature]]
        if bundle.schema.task == "classification":
            labels = [str(c) for c in bundle.classes or []]
            average = {lab: [float(m[j]) for m in means] for j, lab in enumerate(labels)}
        else:
            average = {"prediction": [float(m) for m in means]}
        out.append(
            {
                "feature": feature,
                "kind": "categorical" if feature in bundle.schema.categorical else "numeric",
                "grid": grids[feature],
                "average": average,
            }
        )
    return out


def explain_model(
    bundle: Any,
    frame: pd.DataFrame,
    y: np.ndarray,
    metric: str,
    *,
    top: int = 5,
    n_repeats: int = 3,
    max_rows: int = 2000,
    pd_rows: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Permutation importance for every feature, then partial dependence for the ``top`` most important."""
    importance = permutation_importance(
        bundle, frame, y, metric, n_repeats=n_repeats, max_rows=max_rows, seed=seed
    )
    top_features = [r["feature"] for r in importance["features"][:top]]
    return {
        "importance": importance,
        "partial_dependence": partial_dependence(bundle, frame, top_features, max_rows=pd_rows, seed=seed),
    }


def importance_figure(importance: dict[str, Any], top: int = 15) -> Any:
    """A horizontal bar chart of the ``top`` importances with their spread over repeats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = importance["features"][:top][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    ax.barh(
        [r["feature"] for r in rows],
        [r["importance"] for r in rows],
        xerr=[r["std"] for r in rows],
        color="#4c78a8",
    )
    ax.axvline(0, color="#999", lw=0.8)
    ax.set_xlabel(f"loss in {importance['metric']} when shuffled")
    ax.set_title(
        f"Permutation importance ({importance['rows']} held-out rows, {importance['repeats']} repeats)"
    )
    return fig


def partial_dependence_figure(entries: list[dict[str, Any]], max_lines: int = 10) -> Any:
    """One panel per feature; classification shows one line per class (at most ``max_lines``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(entries))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), squeeze=False)
    for ax, entry in zip(axes[0], entries, strict=False):
        outputs = list(entry["average"].items())
        if len(outputs) == 2:  # binary: the positive class says it all
            outputs = outputs[1:]
        for label, values in outputs[:max_lines]:
            if entry["kind"] == "categorical":
                ax.plot(range(len(entry["grid"])), values, marker="o", label=str(label))
                ax.set_xticks(range(len(entry["grid"])), [str(g) for g in entry["grid"]], rotation=45)
            else:
                ax.plot(entry["grid"], values, label=str(label))
        ax.set_title(entry["feature"], fontsize=10)
        ax.set_xlabel(entry["feature"], fontsize=8)
    axes[0][0].set_ylabel(
        "mean prediction" if entries and "prediction" in entries[0]["average"] else "mean probability"
    )
    if entries and len(entries[0]["average"]) > 2:
        axes[0][-1].legend(fontsize=6, loc="best", title="class", title_fontsize=7)
    fig.suptitle("Partial dependence (held-out sample)", fontsize=11)
    fig.tight_layout()
    return fig
