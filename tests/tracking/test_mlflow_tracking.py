"""`raymlops run` with MLflow tracking, read back from a real MLflow server with MlflowClient."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from raymlops.cli import app
from raymlops.config import load_pipeline
from raymlops.data.ingest import read_frame
from raymlops.model import ModelBundle
from raymlops.pipeline import run_pipeline
from raymlops.tracking import mirror_alias

runner = CliRunner()


def write_pipeline(
    folder: Path, name: str, *, samples: int = 2, trees: int = 20, tracking: str | None = None
) -> Path:
    """A small breast-cancer forest pipeline (seconds of training) written as YAML."""
    raw = {
        "name": name,
        "data": {
            "source": "builtin://breast_cancer",
            "target": "target",
            "split": {"test_size": 0.25, "seed": 3},
        },
        "preprocess": [{"standard_scaler": {"columns": "numeric"}}],
        "models": [
            {
                "name": "rf",
                "kind": "random_forest",
                "params": {"n_estimators": trees, "random_state": 0},
                "search": {"max_depth": {"choice": [3, 6]}, "max_features": {"choice": ["sqrt", 0.3]}},
            }
        ],
        "tune": {"num_samples": samples, "scheduler": "fifo", "metric": "accuracy"},
        "gate": {"min": {"accuracy": 0.8}},
        "deploy": {"promote_to": "champion"},
    }
    if tracking:
        raw["tracking"] = {"mlflow": tracking}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def raw_rows(n: int = 40) -> pd.DataFrame:
    """Raw rows as `raymlops score` reads them from the pipeline's source."""
    return read_frame("builtin://breast_cancer").drop(columns=["target"]).sample(n, random_state=1)


@pytest.fixture(scope="module")
def tracked(ray_session, mlflow_server, tmp_path_factory):
    """One `raymlops run --json` with `tracking: {mlflow: URI}` in the pipeline file."""
    root = tmp_path_factory.mktemp("tracked")
    path = write_pipeline(root, "bc_tracked", tracking=mlflow_server)
    store = root / "store"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("RAYMLOPS_CACHE", str(root / "cache"))
        result = runner.invoke(app, ["run", str(path), "--store", str(store), "--json"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        yield {"summary": summary, "store": store, "path": path, "client": MlflowClient(mlflow_server)}


@pytest.mark.slow
def test_parent_run_holds_config_data_metrics_and_gate(tracked):
    summary, client = tracked["summary"], tracked["client"]
    info = summary["tracking"]
    assert info["warnings"] == [] and info["experiment"] == "bc_tracked"
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    # the pipeline file, flattened
    assert params["name"] == "bc_tracked"
    assert params["models.rf.kind"] == "random_forest" and params["models.rf.params.n_estimators"] == "20"
    assert params["tune.num_samples"] == "2" and params["data.source"] == "builtin://breast_cancer"
    # data lineage
    assert params["data.fingerprint"] == summary["data"]["fingerprint"]
    assert tags["raymlops.data.fingerprint"] == summary["data"]["fingerprint"]
    assert int(params["data.rows"]) == summary["data"]["rows"] == 569
    assert int(params["data.rows.test"]) == summary["data"]["split"]["test"]
    # held-out metrics of the selected model, and the gate
    assert metrics["accuracy"] == pytest.approx(summary["metrics"]["accuracy"])
    assert metrics["candidates.rf.accuracy"] == pytest.approx(summary["models"][0]["metrics"]["accuracy"])
    assert tags["raymlops.gate.passed"] == "true"
    assert tags["raymlops.gate.reasons"] == "; ".join(summary["gate"]["reasons"]) != ""
    assert tags["raymlops.promoted"] == "champion" and tags["raymlops.version"] == "1"
    assert tags["raymlops.pipeline_file"] == str(tracked["path"])


@pytest.mark.slow
def test_parent_run_artifacts_hold_the_report_and_the_pipeline_file(tracked, tmp_path):
    client, run_id = tracked["client"], tracked["summary"]["tracking"]["run_id"]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "pipeline", "raymlops_summary.json"} <= top
    assert {a.path for a in client.list_artifacts(run_id, "pipeline")} == {
        "pipeline/bc_tracked.yaml",
        "pipeline/pipeline.json",
    }
    report = Path(client.download_artifacts(run_id, "report.html", str(tmp_path)))
    version_report = tracked["store"] / "models" / "bc_tracked" / "1" / "report.html"
    assert report.read_bytes() == version_report.read_bytes()
    pipeline_yaml = Path(client.download_artifacts(run_id, "pipeline/bc_tracked.yaml", str(tmp_path)))
    assert pipeline_yaml.read_text() == tracked["path"].read_text()


@pytest.mark.slow
def test_each_trial_is_a_child_run_with_its_params_and_per_step_metrics(tracked):
    summary, client = tracked["summary"], tracked["client"]
    info = summary["tracking"]
    children = client.search_runs(
        [info["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{info['run_id']}'"
    )
    assert len(children) == 2 == info["child_runs"]
    sampled = []
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["raymlops.model"] == "rf"
        assert set(child.data.params) == {"max_depth", "max_features"}
        sampled.append(child.data.params)
        history = client.get_metric_history(child.info.run_id, "accuracy")
        assert [m.step for m in history] == [1, 2, 3, 4, 5]  # one point per block of trees
        trees = client.get_metric_history(child.info.run_id, "trees")
        assert [m.value for m in trees][-1] == 20
        assert "pid" not in child.data.metrics and "time_total_s" not in child.data.metrics
    trials = summary["models"][0]["trials"]
    assert sorted(json.dumps(p, sort_keys=True) for p in sampled) == sorted(
        json.dumps({k: str(v) for k, v in t["params"].items()}, sort_keys=True) for t in trials
    )


@pytest.mark.slow
def test_winner_is_registered_in_mlflow_with_the_promoted_alias(tracked):
    summary, client = tracked["summary"], tracked["client"]
    info = summary["tracking"]
    assert info["registered_model"] == "bc_tracked" and info["alias"] == "champion"
    version = client.get_model_version_by_alias("bc_tracked", "champion")
    assert version.version == info["model_version"] == "1"
    assert version.run_id == info["run_id"]
    assert version.tags["raymlops.version"] == "1"
    assert version.tags["raymlops.gate.passed"] == "true"


@pytest.mark.slow
def test_a_later_promotion_can_be_mirrored_to_mlflow(tracked, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["summary"]["tracking"]["mlflow"])
    store = str(tracked["store"])
    assert mirror_alias("bc_tracked", "challenger", 1, store=store) == "1"
    assert tracked["client"].get_model_version_by_alias("bc_tracked", "challenger").version == "1"
    assert mirror_alias("bc_tracked", "challenger", 7, store=store) is None  # never logged to MLflow
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert mirror_alias("bc_tracked", "challenger", 1) is None  # tracking off: nothing to do


@pytest.mark.slow
def test_pyfunc_model_predicts_like_the_raymlops_bundle_and_has_signature_and_example(tracked, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["summary"]["tracking"]["mlflow"])
    rows = raw_rows()
    model = mlflow.pyfunc.load_model("models:/bc_tracked@champion")
    bundle = ModelBundle.load("bc_tracked:1", str(tracked["store"]))
    got = model.predict(rows)
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), bundle.predict_frame(rows).reset_index(drop=True)
    )
    assert list(got.columns) == ["prediction", "proba_0", "proba_1"]

    inputs = model.metadata.get_input_schema()
    assert inputs.input_names() == list(rows.columns)
    assert {t.name for t in inputs.input_types()} == {"double"}
    assert model.metadata.get_output_schema().input_names() == ["prediction", "proba_0", "proba_1"]
    example = model.input_example
    assert isinstance(example, pd.DataFrame) and list(example.columns) == list(rows.columns)
    assert len(example) == 5
    pd.testing.assert_frame_equal(
        model.predict(example).reset_index(drop=True), bundle.predict_frame(example).reset_index(drop=True)
    )


@pytest.mark.slow
def test_exported_model_holds_no_pickle_and_refuses_a_tampered_version(tracked, tmp_path, monkeypatch):
    info = tracked["summary"]["tracking"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", info["mlflow"])
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/bc_tracked/{info['model_version']}", dst_path=str(tmp_path / "model")
        )
    )
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"  # models from code
    version_dir = local / pyfunc["artifacts"]["raymlops_version"]["path"]
    assert json.loads((version_dir / "metadata.json").read_text())["version"] == 1
    mlflow_files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    mlflow_files = [f for f in mlflow_files if not (local / f).is_relative_to(version_dir)]
    assert "pyfunc_model.py" in mlflow_files and "python_model.pkl" not in mlflow_files
    assert not [f for f in mlflow_files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]

    schema_file = version_dir / "schema.json"
    schema_file.write_text(schema_file.read_text().replace('"classification"', '"regression"'))
    with pytest.raises(Exception, match="schema.json: sha256 differs"):
        mlflow.pyfunc.load_model(str(local))


@pytest.mark.slow
def test_mlflow_tracking_uri_alone_turns_tracking_on(ray_session, mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "bc-env-experiment")
    path = write_pipeline(tmp_path, "bc_env", samples=1, trees=5)
    summary = run_pipeline(load_pipeline(path), store=str(tmp_path / "store"), pipeline_file=str(path))
    info = summary["tracking"]
    assert info["mlflow"] == mlflow_server and info["experiment"] == "bc-env-experiment"
    client = MlflowClient(mlflow_server)
    run = client.get_run(info["run_id"])
    assert run.data.tags["raymlops.data.fingerprint"] == summary["data"]["fingerprint"]
    assert client.get_model_version_by_alias("bc_env", "champion").version == info["model_version"]
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_server  # left as the user set it


@pytest.mark.slow
def test_without_a_tracking_uri_nothing_is_logged(ray_session, mlflow_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default would be ./mlruns here
    path = write_pipeline(tmp_path, "bc_untracked", samples=1, trees=5)
    summary = run_pipeline(load_pipeline(path), store=str(tmp_path / "store"))
    assert "tracking" not in summary and summary["version"] == 1
    assert MlflowClient(mlflow_server).get_experiment_by_name("bc_untracked") is None
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_tracking_off_imports_no_mlflow(tmp_path):
    """`raymlops validate` and an untracked run's tracking hooks never import MLflow."""
    path = write_pipeline(tmp_path, "bc_cold")
    code = (
        "import sys\n"
        "from raymlops.config import load_pipeline\n"
        "from raymlops.pipeline import validate_pipeline\n"
        "from raymlops.tracking import track_pipeline, tune_callbacks\n"
        f"cfg = load_pipeline({str(path)!r})\n"
        "validate_pipeline(cfg)\n"
        "with track_pipeline(cfg) as session:\n"
        "    assert tune_callbacks('rf') == [] and session.log_outcome({}) == {}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(Path(__file__).parents[2])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
