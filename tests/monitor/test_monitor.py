"""``raymlops monitor`` on a version trained by the pipeline: drift, skew, request logs and labels."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from raymlops.cli import app
from raymlops.config import parse_pipeline
from raymlops.evaluate.synthetic import NUMERIC_FEATURES, credit_frame, write_frame
from raymlops.model import ModelBundle
from raymlops.monitor import DRIFT_EXIT_CODE, monitor
from raymlops.pipeline import run_pipeline

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, ray_session: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("monitor")
    source = write_frame(credit_frame(4000, seed=0), root / "train.csv")
    cfg = parse_pipeline(
        {
            "name": "credit",
            "data": {"source": str(source), "target": "approved"},
            "models": [
                {"name": "rf", "kind": "random_forest", "params": {"n_estimators": 25, "max_depth": 8}}
            ],
            "tune": {"num_samples": 1},
        }
    )
    store = str(root / "store")
    summary = run_pipeline(cfg, store=store)
    return {"root": root, "store": store, "version": summary["version"]}


def _monitor_cli(trained: dict[str, Any], data: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    report = trained["root"] / f"{data.stem}.html"
    result = runner.invoke(
        app,
        [
            "monitor",
            "credit",
            "--input",
            str(data),
            "--store",
            trained["store"],
            "--json",
            "--report",
            str(report),
            *extra,
        ],
    )
    assert result.exit_code in (0, DRIFT_EXIT_CODE), result.output
    return result.exit_code, json.loads(result.stdout)


def test_two_shifted_features_are_flagged_and_no_others(trained: dict[str, Any]) -> None:
    shifted = credit_frame(5000, seed=7, shift={"income": 0.8, "tenure": 0.8}, with_target=False)
    data = write_frame(shifted, trained["root"] / "shifted.csv")
    code, result = _monitor_cli(trained, data, "--fail-on-drift")
    assert code == DRIFT_EXIT_CODE
    by_name = {f["feature"]: f for f in result["features"]}
    assert set(by_name) == {*NUMERIC_FEATURES, "region", "group"}
    for f in result["features"]:
        assert {"feature", "psi", "ks_pvalue", "drift"} <= set(f)
    assert sorted(f["feature"] for f in result["features"] if f["drift"]) == ["income", "tenure"]
    assert by_name["income"]["psi"] >= 0.2 and by_name["income"]["ks_pvalue"] < 1e-6
    assert by_name["debt_ratio"]["psi"] < 0.1
    assert result["drift"] is True and result["ok"] is False
    assert "rerun pipeline 'credit'" in result["recommendation"]
    page = Path(result["report"]).read_text()
    assert re.search(r'<img alt="drift per feature" src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', page)
    assert '<img alt="distribution of income"' in page


def test_a_fresh_sample_of_the_training_distribution_flags_nothing(trained: dict[str, Any]) -> None:
    data = write_frame(credit_frame(5000, seed=8, with_target=False), trained["root"] / "fresh.csv")
    code, result = _monitor_cli(trained, data, "--fail-on-drift")
    assert code == 0
    assert [f["feature"] for f in result["features"] if f["drift"]] == []
    assert result["drift"] is False and result["ok"] is True
    assert result["prediction"]["source"] == "scored" and result["prediction"]["drift"] is False
    assert result["recommendation"] is None


def test_a_large_but_tiny_shift_is_not_called_drift(trained: dict[str, Any]) -> None:
    # 50k rows make KS call a 0.05-standard-deviation shift significant; PSI says it is negligible.
    frame = credit_frame(50_000, seed=9, shift={"age": 0.05}, with_target=False)
    data = write_frame(frame, trained["root"] / "tiny.csv")
    result = monitor("credit", str(data), store=trained["store"], write_report=False)
    age = next(f for f in result["features"] if f["feature"] == "age")
    assert age["psi"] < 0.05
    assert age["drift"] is False
    assert result["drifted_features"] == []


def test_schema_skew_and_null_rate_changes_are_reported(trained: dict[str, Any]) -> None:
    frame = credit_frame(2000, seed=10, with_target=False).astype({"age": object})
    frame.loc[:99, "age"] = "unknown"
    frame.loc[100:599, "income"] = None
    frame.loc[:9, "region"] = "atlantis"
    frame = frame.drop(columns=["utilization"])
    data = write_frame(frame.astype({"age": str}), trained["root"] / "skewed.csv")
    code, result = _monitor_cli(trained, data, "--fail-on-drift")
    assert code == DRIFT_EXIT_CODE
    schema = result["schema"]
    assert schema["missing_features"] == ["utilization"]
    assert [m["feature"] for m in schema["type_mismatch"]] == ["age"]
    assert schema["unseen_categories"] == {"region": ["atlantis"]}
    assert [n["feature"] for n in result["data_quality"]["null_rate_increases"]] == ["income"]
    assert result["prediction"] is None  # a feature is missing: nothing can be scored


def _request_log(trained: dict[str, Any], rows: int, seed: int) -> tuple[Path, pd.DataFrame]:
    """A serving request log as ``raymlops serve`` writes it: features, predictions, ids, version."""
    frame = credit_frame(rows, seed=seed)
    bundle = ModelBundle.load("credit", trained["store"])
    features = frame.drop(columns="approved")
    logged = pd.concat([features, bundle.predict_frame(features)], axis=1)
    logged.insert(0, "request_id", [f"req-{seed}-{i}" for i in range(rows)])
    logged.insert(1, "model_version", trained["version"])
    folder = trained["root"] / f"log-{seed}" / "credit" / "date=2026-01-01"
    folder.mkdir(parents=True)
    half = rows // 2
    logged.iloc[:half].to_parquet(folder / "part-0.parquet", index=False)
    logged.iloc[half:].to_parquet(folder / "part-1.parquet", index=False)
    labels = pd.DataFrame({"request_id": logged["request_id"], "approved": frame["approved"]})
    return folder.parent.parent, labels


def test_labels_joined_with_the_request_log_give_live_metrics(trained: dict[str, Any]) -> None:
    log_dir, labels = _request_log(trained, 1200, seed=11)
    labels_file = write_frame(labels.iloc[:900], trained["root"] / "labels.csv")  # later labels: only some
    code, result = _monitor_cli(trained, log_dir, "--labels", str(labels_file), "--key", "request_id")
    assert code == 0
    assert result["prediction"]["source"] == "logged"
    perf = result["performance"]
    assert perf["source"] == "logged" and perf["labeled_rows"] == 900
    assert perf["degraded"] is False, perf["verdict"]
    assert set(perf["live"]) >= {"accuracy", "f1_macro", "roc_auc", "log_loss"}
    assert abs(perf["live"]["accuracy"] - perf["held_out"]["accuracy"]) < 0.08


def test_degraded_live_performance_says_which_pipeline_to_rerun(trained: dict[str, Any]) -> None:
    log_dir, labels = _request_log(trained, 600, seed=12)
    labels["approved"] = 1 - labels["approved"]  # the world changed: the old decisions are now wrong
    labels_file = write_frame(labels, trained["root"] / "flipped.parquet")
    code, result = _monitor_cli(
        trained, log_dir, "--labels", str(labels_file), "--key", "request_id", "--fail-on-drift"
    )
    assert code == DRIFT_EXIT_CODE
    perf = result["performance"]
    assert perf["degraded"] is True and perf["verdict"].startswith("degraded: live accuracy")
    assert result["drift"] is False  # the inputs did not move; only the labels did
    assert "live accuracy degraded" in result["recommendation"] and "'credit'" in result["recommendation"]


def test_labels_without_the_key_column_are_a_clear_error(trained: dict[str, Any]) -> None:
    data = write_frame(credit_frame(100, seed=13), trained["root"] / "small.csv")
    labels = write_frame(pd.DataFrame({"id": [1], "approved": [1]}), trained["root"] / "nokey.csv")
    result = runner.invoke(
        app,
        [
            "monitor",
            "credit",
            "--input",
            str(data),
            "--store",
            trained["store"],
            "--labels",
            str(labels),
            "--key",
            "request_id",
        ],
    )
    assert result.exit_code == 2
    assert "no key column 'request_id'" in result.output
