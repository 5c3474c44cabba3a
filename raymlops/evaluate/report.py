"""Self-contained HTML reports: one per version, one per monitor run.

They are the pages people open instead of reading JSON. Images are embedded as base64 PNGs so a
report can be mailed, attached to a ticket or opened straight from object storage.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pandas as pd

__all__ = ["figure_to_data_uri", "render_table", "write_monitor_report", "write_report"]

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}
th{background:#f5f5f5}.pass{color:#17803d;font-weight:600}.fail{color:#b42318;font-weight:600}
.warn{color:#b54708;font-weight:600}.muted{color:#777}img{max-width:100%}
"""
_MAX_TABLE_ROWS = 200
P = ParamSpec("P")
R = TypeVar("R")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_text(fn: Callable[P, R]) -> Callable[P, R]:
    """Draw every figure of ``fn`` with mathtext off.

    Column names, class labels and group values are the user's text: matplotlib would parse a
    ``$\\foo$`` in them as mathtext and raise after the whole training had run. The setting is
    scoped to the report (``rc_context``), so nobody else's figures change.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        import matplotlib

        _plt()
        with matplotlib.rc_context({"text.parse_math": False}):
            return fn(*args, **kwargs)

    return wrapper


def figure_to_data_uri(fig: Any) -> str:
    """A matplotlib figure as an embeddable ``data:image/png`` URI (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(alt: str, uri: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{uri}">'


def render_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>"
        for r in rows[:_MAX_TABLE_ROWS]
    )
    more = (
        f'<p class="muted">{len(rows) - _MAX_TABLE_ROWS} more rows not shown</p>'
        if len(rows) > _MAX_TABLE_ROWS
        else ""
    )
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _cell(v: Any) -> str:
    if v is True or v is False:
        return "yes" if v else "no"
    if v in ("drift", "refused", "fail"):
        return f'<span class="fail">{v}</span>'
    if v == "warning":
        return '<span class="warn">warning</span>'
    return html.escape(_fmt(v))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return "" if v is None else str(v)


def _page(title: str, sections: list[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>"
    )


# ---- figures ----------------------------------------------------------------------------------------


def _confusion_plot(matrix: list[list[int]], labels: list[Any]) -> str:
    plt = _plt()
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(labels), 1 + 0.45 * len(labels)))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), [str(lab) for lab in labels], rotation=45)
    ax.set_yticks(range(len(labels)), [str(lab) for lab in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8, color="black")
    ax.set_title("Confusion matrix (held-out split)")
    return figure_to_data_uri(fig)


def _residual_plot(y_true: np.ndarray, pred: np.ndarray) -> str:
    plt = _plt()
    y_true = np.asarray(y_true, dtype=float)
    pred = np.asarray(pred, dtype=float).reshape(-1)
    resid = y_true - pred
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.scatter(pred, resid, s=6, alpha=0.5, color="#4c78a8")
    ax1.axhline(0, color="#b42318", lw=1)
    ax1.set_xlabel("predicted")
    ax1.set_ylabel("actual - predicted")
    ax1.set_title("Residuals vs prediction (held-out)")
    ax2.hist(resid, bins=40, color="#4c78a8")
    ax2.set_xlabel("residual")
    ax2.set_title("Residual distribution")
    fig.tight_layout()
    return figure_to_data_uri(fig)


def _fairness_plot(report: dict[str, Any]) -> str | None:
    rows = [r for r in report.get("groups", []) if isinstance(r.get("selection_rate"), (int, float))]
    if not rows:
        rows = [r for r in report.get("groups", []) if isinstance(r.get("accuracy"), (int, float))]
        key = "accuracy"
    else:
        key = "selection_rate"
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(3.5, 0.7 * len(rows) + 1.5), 3))
    ax.bar([str(r["group"]) for r in rows], [r[key] for r in rows], color="#72b7b2")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_ylim(0, 1)
    ax.set_title(f"{key.replace('_', ' ')} by {report.get('sensitive')}")
    return figure_to_data_uri(fig)


def _overlay_plot(
    name: str,
    ref: dict[str, Any],
    cur: dict[str, Any],
    ref_values: np.ndarray | None,
    cur_values: np.ndarray | None,
) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 2.8))
    if ref["type"] == "numeric" and ref_values is not None and cur_values is not None:
        both = np.concatenate([ref_values[np.isfinite(ref_values)], cur_values[np.isfinite(cur_values)]])
        bins = np.histogram_bin_edges(both, bins=30) if both.size else 10
        ax.hist(ref_values[np.isfinite(ref_values)], bins=bins, density=True, alpha=0.5, label="reference")
        ax.hist(cur_values[np.isfinite(cur_values)], bins=bins, density=True, alpha=0.5, label="current")
        ax.locator_params(axis="x", nbins=5)
    elif ref["type"] == "numeric":
        n = len(ref["bin_fractions"])
        x = np.arange(n)
        ax.bar(x - 0.2, ref["bin_fractions"], width=0.4, label="reference")
        ax.bar(x + 0.2, cur.get("current_bin_fractions") or [0] * n, width=0.4, label="current")
        ax.set_xlabel("reference quantile bin")
    else:
        cats = list(ref["frequencies"])[:15]
        x = np.arange(len(cats))
        ax.bar(x - 0.2, [ref["frequencies"][c] for c in cats], width=0.4, label="reference")
        ax.bar(
            x + 0.2, [cur.get("current_frequencies", {}).get(c, 0) for c in cats], width=0.4, label="current"
        )
        ax.set_xticks(x, cats, rotation=45)
    psi_value = cur.get("psi")
    ax.set_title(f"{name}: PSI {psi_value:.3f}" if isinstance(psi_value, (int, float)) else name, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_to_data_uri(fig)


def _psi_bar_plot(features: list[dict[str, Any]], thresholds: dict[str, Any]) -> str:
    plt = _plt()
    rows = sorted((f for f in features if f.get("psi") is not None), key=lambda f: f["psi"], reverse=True)[
        :30
    ]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
    colors = [
        "#b42318" if f["status"] == "drift" else "#f79009" if f["status"] == "warning" else "#4c78a8"
        for f in rows[::-1]
    ]
    ax.barh([f["feature"] for f in rows[::-1]], [f["psi"] for f in rows[::-1]], color=colors)
    ax.axvline(thresholds.get("psi_drift", 0.2), color="#b42318", ls="--", lw=1, label="drift")
    ax.axvline(thresholds.get("psi_warning", 0.1), color="#f79009", ls=":", lw=1, label="warning")
    ax.set_xlabel("PSI against the training reference")
    ax.legend(fontsize=7)
    ax.set_title("Drift per feature")
    return figure_to_data_uri(fig)


# ---- sections ---------------------------------------------------------------------------------------


def _drift_table(features: list[dict[str, Any]]) -> str:
    rows = [
        {
            "feature": f["feature"],
            "type": f["type"],
            "status": f["status"],
            "PSI": f.get("psi"),
            "KS statistic": f.get("ks_statistic"),
            "KS p-value": f.get("ks_pvalue"),
            "chi² p-value": f.get("chi2_pvalue"),
            "null rate": f.get("null_rate"),
            "reference null rate": f.get("reference_null_rate"),
            "mean": f.get("mean"),
            "reference mean": f.get("reference_mean"),
        }
        for f in features
    ]
    return render_table(rows)


def _fairness_section(report: dict[str, Any], limits: dict[str, Any] | None) -> str:
    parts = [f"<h2>Fairness: {html.escape(str(report.get('sensitive')))}</h2>"]
    summary = [
        {"measure": k, "value": report.get(k), "limit": (limits or {}).get(f"max_{k}")}
        for k in ("demographic_parity_difference", "equalized_odds_difference", "mean_prediction_difference")
        if k in report
    ]
    parts.append(render_table(summary))
    if report.get("positive_class") is not None:
        parts.append(
            f'<p class="muted">positive class: {html.escape(str(report["positive_class"]))}; groups '
            f"with fewer than {report.get('min_group_size')} held-out rows are left out of the "
            "differences</p>"
        )
    if report.get("note"):
        parts.append(f'<p class="muted">{html.escape(report["note"])}</p>')
    parts.append(render_table(report.get("groups", [])))
    uri = _fairness_plot(report)
    if uri:
        parts.append(_img("fairness by group", uri))
    return "".join(parts)


def _explanation_section(explanation: dict[str, Any]) -> str:
    from raymlops.evaluate.explain import importance_figure, partial_dependence_figure

    importance = explanation.get("importance") or {}
    parts = ["<h2>Permutation importance</h2>"]
    if importance.get("features"):
        parts.append(_img("permutation importance", figure_to_data_uri(importance_figure(importance))))
        parts.append(
            f'<p class="muted">loss in {html.escape(importance["metric"])} '
            f"(baseline {importance['baseline']:.4f}) "
            f"when one raw feature column is shuffled; {importance['rows']} held-out rows, "
            f"{importance['repeats']} repeats</p>"
        )
        parts.append(render_table(importance["features"][:30]))
    pdp = explanation.get("partial_dependence") or []
    if pdp:
        parts.append("<h2>Partial dependence</h2>")
        parts.append(_img("partial dependence", figure_to_data_uri(partial_dependence_figure(pdp))))
    return "".join(parts)


def _data_summary(reference: dict[str, Any]) -> str:
    rows = []
    for name, s in reference.get("features", {}).items():
        if s["type"] == "numeric":
            q = s.get("quantiles", {})
            rows.append(
                {
                    "feature": name,
                    "type": "numeric",
                    "null rate": s.get("null_rate"),
                    "mean": s.get("mean"),
                    "std": s.get("std"),
                    "min": s.get("min"),
                    "median": q.get("0.5"),
                    "max": s.get("max"),
                    "top categories": None,
                }
            )
        else:
            top = sorted(s["frequencies"].items(), key=lambda kv: -kv[1])[:3]
            rows.append(
                {
                    "feature": name,
                    "type": "categorical",
                    "null rate": s.get("null_rate"),
                    "mean": None,
                    "std": None,
                    "min": None,
                    "median": None,
                    "max": None,
                    "top categories": ", ".join(f"{k} {v:.0%}" for k, v in top),
                }
            )
    pred = reference.get("prediction") or {}
    text = ""
    if pred.get("type") == "categorical":
        text = (
            "<p>Predicted class shares on the held-out rows: "
            + html.escape(", ".join(f"{k} {v:.1%}" for k, v in pred.get("frequencies", {}).items()))
            + "</p>"
        )
    elif pred:
        text = f"<p>Held-out predictions: mean {pred.get('mean', 0):.4f}, std {pred.get('std', 0):.4f}</p>"
    return "<h3>Features (training rows)</h3>" + render_table(rows) + text


@_plain_text
def write_report(
    path: Path,
    name: str,
    metadata: dict[str, Any],
    bundle: Any,
    prepared: Any,
    *,
    explanation: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
    split_drift: dict[str, Any] | None = None,
    residuals: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Write ``report.html`` for a version about to be registered.

    Args:
        path: the file to write.
        name: the model's name.
        metadata: the version's metadata (metrics, gate, candidates, params, data).
        bundle: the model, for class labels and the schema.
        prepared: the pipeline's prepared data (unused beyond what metadata holds; kept for callers).
        explanation: :func:`raymlops.evaluate.explain.explain_model` output.
        reference: the version's reference statistics, for the data summary.
        split_drift: the held-out split compared with the training reference (a sanity check of the split).
        residuals: ``(y_true, predictions)`` on the held-out rows, for the regression residual plot.
    """
    metrics = metadata.get("metrics", {})
    gate = metadata.get("gate", {})
    sections = [
        f"<h1>{html.escape(name)}</h1>",
        f'<p class="muted">model {html.escape(str(metadata["model"]))} '
        f"({html.escape(str(metadata['kind']))}), task {html.escape(str(metadata['task']))}, "
        f"selection metric {html.escape(str(metadata.get('metric')))}</p>",
    ]
    verdict = (
        '<span class="pass">passed</span>' if gate.get("passed") else '<span class="fail">refused</span>'
    )
    sections.append(f"<h2>Gate: {verdict}</h2>")
    sections.append("<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in gate.get("reasons", [])) + "</ul>")
    if gate.get("checks"):
        sections.append(render_table(gate["checks"]))
    champion = metadata.get("champion_at_gate")
    if champion:
        sections.append(
            f"<p>Champion at gate time: v{champion.get('version')}, re-scored on this run's held-out rows: "
            + html.escape(
                ", ".join(
                    f"{k}={v:.4f}"
                    for k, v in (champion.get("metrics") or {}).items()
                    if isinstance(v, (int, float))
                )
                or champion.get("note", "no metrics")
            )
            + "</p>"
        )
    scalar = [{"metric": k, "value": v} for k, v in metrics.items() if isinstance(v, (int, float))]
    sections.append("<h2>Held-out metrics</h2>" + render_table(scalar))
    interval = metrics.get("interval")
    if interval and interval.get("low") is not None:
        sections.append(
            f"<p>{html.escape(interval['metric'])} {int(interval['level'] * 100)}% bootstrap interval: "
            f"[{interval['low']:.4f}, {interval['high']:.4f}] over {interval['rounds']} resamples</p>"
        )
    if "confusion_matrix" in metrics:
        uri = _confusion_plot(metrics["confusion_matrix"], bundle.classes or [])
        sections.append(f"<h2>Confusion matrix</h2>{_img('confusion matrix', uri)}")
    if residuals is not None:
        sections.append(f"<h2>Residuals</h2>{_img('residual plot', _residual_plot(*residuals))}")
    if explanation:
        sections.append(_explanation_section(explanation))
    if isinstance(metrics.get("fairness"), dict):
        limits = (metadata.get("pipeline") or {}).get("fairness")
        sections.append(_fairness_section(metrics["fairness"], limits))
    sections.append(
        "<h2>Candidates</h2>"
        + render_table(
            [
                {
                    "model": c["name"],
                    "kind": c["kind"],
                    "validation metric": c["val_metric"],
                    **{k: v for k, v in c["metrics"].items()},
                }
                for c in metadata.get("candidates", [])
            ]
        )
    )
    sections.append(
        "<h2>Parameters</h2>"
        + render_table([{"param": k, "value": v} for k, v in metadata["params"].items()])
    )
    data = metadata.get("data", {})
    sections.append("<h2>Data</h2>" + render_table([{"item": k, "value": v} for k, v in data.items()]))
    if reference:
        sections.append(_data_summary(reference))
    else:
        sections.append(
            render_table(
                [{"feature": c, "type": bundle.schema.column_types.get(c)} for c in bundle.schema.features]
            )
        )
    if split_drift:
        sections.append(
            "<h2>Drift per feature: held-out split vs training reference</h2>"
            '<p class="muted">Both come from the same data, so nothing should drift here; a drifted feature '
            "means the split is not representative (or the data is ordered in time).</p>"
        )
        if split_drift.get("features"):
            sections.append(
                _img(
                    "drift per feature",
                    _psi_bar_plot(split_drift["features"], split_drift.get("thresholds", {})),
                )
            )
        sections.append(_drift_table(split_drift.get("features", [])))
    for extra in metadata.get("_report_sections", []):
        sections.append(extra)
    path.write_text(_page(f"{name} report", sections))


@_plain_text
def write_monitor_report(
    path: Path,
    result: dict[str, Any],
    reference: dict[str, Any],
    reference_sample: pd.DataFrame | None,
    current_sample: pd.DataFrame | None,
) -> None:
    """Write the HTML report of one monitor run: drift, skew, quality, predictions, live metrics."""
    title = f"{result['model']} v{result['version']}: monitor"
    verdict = (
        '<span class="pass">no drift</span>' if not result["drift"] else '<span class="fail">drift</span>'
    )
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">input {html.escape(str(result["input"]))}, {result["rows"]} rows '
        f"({result['sampled_rows']} sampled for KS tests)</p>",
        f"<h2>Verdict: {verdict}</h2>",
    ]
    if result.get("recommendation"):
        sections.append(f"<p><b>{html.escape(result['recommendation'])}</b></p>")
    features = result.get("features", [])
    sections.append("<h2>Drift per feature</h2>")
    sections.append(
        '<p class="muted">drift: PSI &ge; {psi_drift} backed by a KS (numeric) or chi² (categorical) p-value '
        "&lt; {pvalue}; warning: PSI &ge; {psi_warning}, "
        "or a significant KS statistic &ge; {ks_effect}</p>".format(**result.get("thresholds", {}))
    )
    if features:
        sections.append(_img("drift per feature", _psi_bar_plot(features, result.get("thresholds", {}))))
    sections.append(_drift_table(features))
    flagged = [f for f in features if f["status"] != "ok"]
    flagged.sort(key=lambda f: -(f.get("psi") or 0))
    if flagged:
        sections.append("<h3>Reference vs current, flagged features</h3>")
        for f in flagged[:8]:
            name = f["feature"]
            ref_vals = (
                np.asarray(reference_sample[name], dtype=float)
                if reference_sample is not None and f["type"] == "numeric" and name in reference_sample
                else None
            )
            cur_vals = (
                np.asarray(current_sample[name], dtype=float)
                if current_sample is not None and f["type"] == "numeric" and name in current_sample
                else None
            )
            sections.append(
                _img(
                    f"distribution of {name}",
                    _overlay_plot(name, reference["features"][name], f, ref_vals, cur_vals),
                )
            )
    schema = result.get("schema", {})
    sections.append("<h2>Schema skew</h2>")
    sections.append(
        render_table(
            [
                {"check": "missing feature columns", "found": schema.get("missing_features")},
                {"check": "columns the model does not use", "found": schema.get("extra_columns")},
                {"check": "non-numeric values in numeric features", "found": schema.get("type_mismatch")},
                {"check": "categories never seen in training", "found": schema.get("unseen_categories")},
            ]
        )
    )
    sections.append("<h2>Data quality: null rates</h2>")
    sections.append(render_table(result.get("data_quality", {}).get("null_rate_increases", [])))
    pred = result.get("prediction")
    sections.append("<h2>Prediction drift</h2>")
    if pred:
        sections.append(
            render_table(
                [{k: v for k, v in pred.items() if k not in ("frequencies", "reference_frequencies")}]
            )
        )
        if "frequencies" in pred:
            rows = [
                {"class": k, "reference share": pred["reference_frequencies"].get(k), "current share": v}
                for k, v in pred["frequencies"].items()
            ]
            sections.append(render_table(rows))
    else:
        sections.append(
            '<p class="muted">no predictions: the input has neither a prediction column nor all '
            "feature columns</p>"
        )
    perf = result.get("performance")
    if perf:
        sections.append("<h2>Live performance (labels joined with predictions)</h2>")
        sections.append(f"<p>{html.escape(str(perf.get('verdict', '')))}</p>")
        sections.append(render_table(perf.get("comparison", [])))
        sections.append(
            f'<p class="muted">{perf["labeled_rows"]} labeled rows joined on {html.escape(perf["key"])}; '
            f"{perf['unknown_labels']} labels unknown to the model</p>"
        )
    path.write_text(_page(title, sections))
