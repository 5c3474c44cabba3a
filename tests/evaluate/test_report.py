"""The HTML reports render with their figures embedded, so they open anywhere without other files."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raymlops.evaluate.explain import explain_model
from raymlops.evaluate.fairness import fairness_report
from raymlops.evaluate.metrics import compute_metrics, confusion
from raymlops.evaluate.reference import build_reference
from raymlops.evaluate.report import write_monitor_report, write_report
from raymlops.model import ModelBundle
from raymlops.monitor._drift import Thresholds, batch_stats, finalize, spec_from_reference

from . import toy_bundle, toy_frame


def _images(page: str) -> dict[str, bytes]:
    found = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return {alt: base64.b64decode(data) for alt, data in found}


def _metadata(bundle: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "rf",
        "kind": "random_forest",
        "task": bundle.schema.task,
        "metric": "accuracy" if bundle.schema.task == "classification" else "rmse",
        "metrics": metrics,
        "params": {"n_estimators": 30},
        "gate": {"passed": False, "reasons": ["fairness.demographic_parity_difference 0.3 > max 0.1"]},
        "data": {"rows": 1200},
        "candidates": [],
        "pipeline": {"fairness": {"max_demographic_parity_difference": 0.1}},
    }


def test_version_report_has_every_figure_and_the_fairness_table(ray_session: Any, tmp_path: Path) -> None:
    train, held_out = toy_frame(1000, seed=0), toy_frame(400, seed=1)
    bundle = toy_bundle(train)
    y = held_out["y"].to_numpy()
    scores = bundle.score(held_out).scores
    metrics: dict[str, Any] = compute_metrics("classification", y, scores, 2)
    metrics["confusion_matrix"] = confusion(y, scores.argmax(axis=1), 2)
    metrics["fairness"] = fairness_report(held_out["c"], y, scores, "classification", [0, 1], column="c")
    explanation = explain_model(bundle, held_out, y, "accuracy", top=2, n_repeats=1)
    reference, sample = build_reference(train, bundle.schema, scores)
    split = finalize(batch_stats(held_out, spec_from_reference(reference)), reference, sample, Thresholds())
    path = tmp_path / "report.html"
    write_report(
        path,
        "toy",
        _metadata(bundle, metrics),
        bundle,
        None,
        explanation=explanation,
        reference=reference,
        split_drift=split,
    )
    page = path.read_text()
    images = _images(page)
    assert set(images) == {
        "confusion matrix",
        "permutation importance",
        "partial dependence",
        "fairness by group",
        "drift per feature",
    }
    assert all(png.startswith(b"\x89PNG") for png in images.values())
    assert "<h2>Fairness: c</h2>" in page and "demographic_parity_difference" in page
    assert 'class="fail">refused' in page and "Held-out metrics" in page
    assert 'src="http' not in page and "<script" not in page  # self-contained


def test_regression_report_shows_residuals(ray_session: Any, tmp_path: Path) -> None:
    train, held_out = toy_frame(800, seed=2, task="regression"), toy_frame(300, seed=3, task="regression")
    bundle = toy_bundle(train, task="regression")
    y = held_out["y"].to_numpy()
    pred = bundle.score(held_out).scores
    path = tmp_path / "report.html"
    write_report(
        path,
        "toy",
        _metadata(bundle, compute_metrics("regression", y, pred)),
        bundle,
        None,
        residuals=(y, pred),
    )
    assert "residual plot" in _images(path.read_text())


def test_monitor_report_shows_drift_and_the_shifted_feature(ray_session: Any, tmp_path: Path) -> None:
    train = toy_frame(2000, seed=4)
    bundle = toy_bundle(train)
    reference, sample = build_reference(train, bundle.schema, bundle.score(train).scores)
    current = toy_frame(2000, seed=5).assign(x1=lambda f: f["x1"] + 2.0)
    stats = batch_stats(current, spec_from_reference(reference))
    result = {
        "model": "toy",
        "version": 1,
        "input": "somewhere.parquet",
        "recommendation": "rerun it",
        **finalize(stats, reference, sample, Thresholds()),
    }
    assert result["drifted_features"] == ["x1"]
    path = tmp_path / "monitor.html"
    write_monitor_report(path, result, reference, sample, pd.DataFrame(stats["sample"]))
    images = _images(path.read_text())
    assert {"drift per feature", "distribution of x1"} <= set(images)
    assert np.all([png.startswith(b"\x89PNG") for png in images.values()])


def _mathtext_bundle(frame: pd.DataFrame) -> Any:
    """A forest over columns and class labels that matplotlib would read as (broken) mathtext."""
    from sklearn.ensemble import RandomForestClassifier

    from raymlops.config import PreprocessStep
    from raymlops.data.preprocess import FeaturePipeline
    from raymlops.data.schema import TableSchema

    schema = TableSchema(
        target="y",
        task="classification",
        features=[r"$\foo$", "x1", r"$\grp$"],
        categorical=[r"$\grp$"],
        column_types={r"$\foo$": "float", "x1": "float", r"$\grp$": "category", "y": "string"},
        classes=[r"$\no$", r"$\yes$"],
        categories={r"$\grp$": [r"$\a$", "b", "c"]},
    )
    features = FeaturePipeline([PreprocessStep.model_validate({"standard_scaler": {"columns": "numeric"}})])
    features.fit(frame, schema)
    y = (frame["y"] == r"$\yes$").to_numpy().astype(np.int64)
    est = RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0).fit(
        features.transform(frame), y
    )
    return ModelBundle.from_estimator("random_forest", est, features.to_plan(), schema)


def _mathtext_frame(rows: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    frame = toy_frame(rows, seed=seed).rename(columns={"x0": r"$\foo$", "c": r"$\grp$"})
    frame[r"$\grp$"] = frame[r"$\grp$"].replace({"a": r"$\a$"})
    frame[r"$\foo$"] = frame[r"$\foo$"] + shift
    frame["y"] = np.where(frame["y"] == 1, r"$\yes$", r"$\no$").astype(object)
    return frame


def test_reports_render_column_names_and_labels_that_look_like_mathtext(
    ray_session: Any, tmp_path: Path
) -> None:
    # A `$\foo$` column or class label is plain text to the user; matplotlib would parse it as
    # mathtext and fail ("Unknown symbol: \foo") after the whole training, losing the run.

    train, held_out = _mathtext_frame(800, 0), _mathtext_frame(300, 1)
    bundle = _mathtext_bundle(train)
    y = (held_out["y"] == r"$\yes$").to_numpy().astype(np.int64)
    scores = bundle.score(held_out).scores
    metrics: dict[str, Any] = compute_metrics("classification", y, scores, 2)
    metrics["confusion_matrix"] = confusion(y, scores.argmax(axis=1), 2)
    metrics["fairness"] = fairness_report(
        held_out[r"$\grp$"], y, scores, "classification", [r"$\no$", r"$\yes$"], column=r"$\grp$"
    )
    explanation = explain_model(bundle, held_out, held_out["y"].to_numpy(), "accuracy", top=2, n_repeats=1)
    reference, sample = build_reference(train, bundle.schema, bundle.score(train).scores)
    split = finalize(batch_stats(held_out, spec_from_reference(reference)), reference, sample, Thresholds())
    path = tmp_path / "report.html"
    write_report(
        path,
        r"$\model$",
        _metadata(bundle, metrics),
        bundle,
        None,
        explanation=explanation,
        reference=reference,
        split_drift=split,
    )
    page = path.read_text()
    images = _images(page)
    assert {"confusion matrix", "permutation importance", "fairness by group", "drift per feature"} <= set(
        images
    )
    assert r"$\foo$" in page and r"$\grp$" in page

    # The monitor report draws one distribution per drifted feature, named by the column.
    current = _mathtext_frame(2000, 5, shift=2.0)
    stats = batch_stats(current, spec_from_reference(reference))
    result = {
        "model": "m",
        "version": 1,
        "input": "x.parquet",
        **finalize(stats, reference, sample, Thresholds()),
    }
    assert r"$\foo$" in result["drifted_features"]
    mon = tmp_path / "monitor.html"
    write_monitor_report(mon, result, reference, sample, pd.DataFrame(stats["sample"]))
    assert "distribution of $\\foo$" in set(_images(mon.read_text()))
