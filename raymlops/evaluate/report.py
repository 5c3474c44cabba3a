"""A self-contained HTML report per version: the page people open instead of reading JSON.

Images are embedded as base64 PNGs so the file can be mailed or opened from object storage.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

__all__ = ["figure_to_data_uri", "render_table", "write_report"]

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}
th{background:#f5f5f5}.pass{color:#17803d;font-weight:600}.fail{color:#b42318;font-weight:600}
.muted{color:#777}img{max-width:100%}
"""


def figure_to_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return "" if v is None else str(v)


def _confusion_plot(matrix: list[list[int]], labels: list[Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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


def write_report(path: Path, name: str, metadata: dict[str, Any], bundle: Any, prepared: Any) -> None:
    """Write ``report.html`` for a version about to be registered."""
    metrics = metadata.get("metrics", {})
    gate = metadata.get("gate", {})
    sections = [f"<h1>{html.escape(name)}</h1>", f'<p class="muted">model {html.escape(metadata["model"])} '
                f'({html.escape(metadata["kind"])}), task {html.escape(metadata["task"])}</p>']
    verdict = '<span class="pass">passed</span>' if gate.get("passed") else '<span class="fail">refused</span>'
    sections.append(f"<h2>Gate: {verdict}</h2>")
    sections.append("<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in gate.get("reasons", [])) + "</ul>")
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
        sections.append(f'<h2>Confusion matrix</h2><img alt="confusion matrix" src="{uri}">')
    sections.append(
        "<h2>Candidates</h2>"
        + render_table(
            [{"model": c["name"], "kind": c["kind"], "validation metric": c["val_metric"],
              **{k: v for k, v in c["metrics"].items()}} for c in metadata.get("candidates", [])]
        )
    )
    sections.append("<h2>Parameters</h2>" + render_table([{"param": k, "value": v} for k, v in metadata["params"].items()]))
    data = metadata.get("data", {})
    sections.append(
        "<h2>Data</h2>"
        + render_table([{"item": k, "value": v} for k, v in data.items()])
        + render_table(
            [{"feature": c, "type": bundle.schema.column_types.get(c)} for c in bundle.schema.features][:200]
        )
    )
    for extra in metadata.get("_report_sections", []):
        sections.append(extra)
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)} report</title>" \
           f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>"
    path.write_text(page)
