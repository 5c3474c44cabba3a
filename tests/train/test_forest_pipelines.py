"""Forest pipelines end to end: classification and regression reach their quality bars."""

import json
from pathlib import Path

import pytest
import yaml
from sklearn.datasets import load_diabetes

from raymlops.config import load_pipeline
from raymlops.model import ModelBundle
from raymlops.pipeline import run_pipeline

pytestmark = pytest.mark.slow
PIPELINES = Path(__file__).parents[2] / "pipelines"


def test_breast_cancer_forest_reaches_093_and_serves_through_onnx(ray_session, tmp_path):
    cfg = load_pipeline(PIPELINES / "breast_cancer.yaml")
    cfg.tune.num_samples = 3
    summary = run_pipeline(cfg, store=str(tmp_path / "store"))
    assert summary["metrics"]["accuracy"] >= 0.93
    assert summary["promoted"] == "champion"
    bundle = ModelBundle.load("breast_cancer", str(tmp_path / "store"))
    version_dir = tmp_path / "store" / "models" / "breast_cancer" / "1"
    fast = json.loads((version_dir / "fast_path.json").read_text())
    assert fast["onnx"] is True and fast["same_labels"] is True
    assert bundle.predictor.onnx is not None


def test_regression_from_a_diabetes_csv_reaches_r2_035(ray_session, tmp_path):
    csv = tmp_path / "diabetes.csv"
    load_diabetes(as_frame=True).frame.to_csv(csv, index=False)
    raw = yaml.safe_load((PIPELINES / "diabetes.yaml").read_text())
    raw["data"]["source"] = str(csv)
    raw["tune"]["num_samples"] = 3
    path = tmp_path / "diabetes.yaml"
    path.write_text(yaml.safe_dump(raw))
    summary = run_pipeline(load_pipeline(path), store=str(tmp_path / "store"))
    metrics = summary["metrics"]
    assert metrics["r2"] >= 0.35, metrics
    assert {"rmse", "mae", "r2"} <= set(metrics)
    assert summary["gate"]["passed"], summary["gate"]
    predictions = ModelBundle.load("diabetes", str(tmp_path / "store")).predict_frame(
        load_diabetes(as_frame=True).frame.drop(columns=["target"]).head(5)
    )
    assert predictions["prediction"].between(25, 346).all()
