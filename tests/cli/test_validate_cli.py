import json
from pathlib import Path

import pandas as pd
import yaml
from typer.testing import CliRunner

from raymlops.cli import app

runner = CliRunner()


def pipeline(tmp_path: Path, **overrides) -> Path:
    raw = {
        "name": "t",
        "data": {"source": "builtin://breast_cancer", "target": "target"},
        "models": [{"name": "rf", "kind": "random_forest", "params": {"n_estimators": 5}}],
        "store": str(tmp_path / "store"),
    }
    raw.update(overrides)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_misspelled_key_exits_nonzero_naming_it_and_writes_nothing(tmp_path):
    path = pipeline(tmp_path, tune={"num_sampels": 3})
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code != 0
    assert "num_sampels" in result.output
    assert not (tmp_path / "store").exists()


def test_csv_without_target_exits_nonzero_naming_the_column(ray_session, tmp_path):
    pd.DataFrame({"a": [1, 2, 3], "b": [4, 5, 6]}).to_csv(tmp_path / "d.csv", index=False)
    path = pipeline(tmp_path, data={"source": "d.csv", "target": "label"})
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code != 0
    assert "'label'" in result.output
    assert not (tmp_path / "store").exists()


def test_valid_pipeline_reports_rows_and_split_as_json(tmp_path):
    result = runner.invoke(app, ["validate", str(pipeline(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rows"] == 569 and report["task"] == "classification"
    assert sum(report["split"].values()) == 569
