import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from raymlops.cli import app

runner = CliRunner()

pytestmark = pytest.mark.slow


def small_digits(tmp_path: Path) -> Path:
    raw = yaml.safe_load((Path(__file__).parents[2] / "pipelines" / "digits.yaml").read_text())
    raw["models"] = [
        {
            "name": "rf",
            "kind": "random_forest",
            "workers": 2,
            "params": {"n_estimators": 60, "random_state": 0},
            "search": {"max_features": {"choice": ["sqrt", 0.3]}},
        }
    ]
    raw["tune"] = {"num_samples": 2, "scheduler": "asha", "metric": "accuracy"}
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_run_registers_promotes_and_prints_one_json_object(ray_session, tmp_path):
    store = tmp_path / "store"
    result = runner.invoke(app, ["run", str(small_digits(tmp_path)), "--store", str(store), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    model = summary["models"][0]
    assert model["name"] == "rf" and model["kind"] == "random_forest" and model["workers"] == 2
    assert "max_features" in model["best_params"]
    assert model["metrics"]["accuracy"] >= 0.9
    assert summary["version"] == 1
    assert summary["gate"]["passed"] is True and summary["gate"]["reasons"]
    assert summary["promoted"] == "champion"

    version_dir = store / "models" / "digits" / "1"
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert set(metadata["files"]) >= {"model.skops", "features.json", "schema.json", "report.html"}
    assert metadata["data"]["fingerprint"] == summary["data"]["fingerprint"]
    assert json.loads((store / "models" / "digits" / "aliases.json").read_text())["champion"] == 1

    shown = runner.invoke(app, ["models", "show", "digits", "--store", str(store), "--json"])
    assert shown.exit_code == 0
    assert json.loads(shown.stdout)["version"] == 1

    listed = runner.invoke(app, ["models", "list", "--store", str(store), "--json"])
    assert json.loads(listed.stdout)["models"][0]["aliases"] == {"champion": 1}
