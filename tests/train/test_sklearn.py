"""``kind: sklearn``: any scikit-learn estimator by its import path, from the pipeline file to the store.

The pipeline test runs the shipped ``pipelines/breast_cancer_hgb.yaml`` through ``raymlops run``
(Tune trials, refit, gate, registration) and loads what was registered; the config tests show
that a mistake in the file is refused when it is read, naming the key and where it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from raymlops.cli import app
from raymlops.config import parse_pipeline
from raymlops.data.ingest import load_builtin
from raymlops.errors import ConfigError

PIPELINES = Path(__file__).parents[2] / "pipelines"
HGB = "sklearn.ensemble.HistGradientBoostingClassifier"
runner = CliRunner()


def _doc(model: dict[str, Any]) -> dict[str, Any]:
    return {"name": "p", "data": {"source": "builtin://breast_cancer"}, "models": [{"name": "m", **model}]}


@pytest.mark.slow
def test_breast_cancer_hgb_pipeline_registers_a_model_above_95_percent(
    ray_session: Any, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    result = runner.invoke(
        app, ["run", str(PIPELINES / "breast_cancer_hgb.yaml"), "--store", str(store), "--json"]
    )
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads(result.stdout)
    (model,) = summary["models"]
    assert model["kind"] == "sklearn" and summary["selected"] == "hgb"
    # Every Tune trial ran (none errored) and the searched keys were sampled within their spaces.
    assert len(model["trials"]) == 4 and all(t["error"] is None for t in model["trials"])
    best = model["best_params"]
    assert 0.03 <= best["learning_rate"] <= 0.3 and best["max_leaf_nodes"] in (7, 15, 31)
    assert summary["metrics"]["accuracy"] >= 0.95, summary["metrics"]
    assert summary["gate"]["passed"] and summary["promoted"] == "champion"

    # The version records the estimator class and holds it as skops, not a pickle.
    version = store / "models" / "breast_cancer_hgb" / str(summary["version"])
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["kind"] == "sklearn" and metadata["estimator"] == HGB
    assert "model.skops" in metadata["files"] and not list(version.glob("*.pkl"))

    # Loaded back from the store it is the same estimator with the best params, and scores as such.
    from raymlops.model import ModelBundle

    bundle = ModelBundle.load("breast_cancer_hgb", str(store))
    assert type(bundle.predictor.estimator).__name__ == "HistGradientBoostingClassifier"
    assert bundle.predictor.estimator.get_params()["max_leaf_nodes"] == best["max_leaf_nodes"]
    frame = load_builtin("breast_cancer")  # the rows `builtin://breast_cancer` reads
    scored = bundle.score(frame[bundle.schema.features])
    assert scored.n_rejected == 0
    assert np.mean(scored.labels == frame["target"].to_numpy()) >= 0.95


def test_a_params_typo_names_the_key_and_its_place() -> None:
    with pytest.raises(ConfigError) as err:
        parse_pipeline(_doc({"kind": "sklearn", "estimator": HGB, "params": {"max_iterr": 10}}), "hgb.yaml")
    message = str(err.value)
    assert message.startswith("hgb.yaml: models[0]") and "params" in message and "'max_iterr'" in message
    assert HGB in message and "max_iter" in message.split("known:", 1)[1]  # what it could have been

    with pytest.raises(ConfigError, match=r"models\[0\].*search.*'lerning_rate'"):
        parse_pipeline(
            _doc({"kind": "sklearn", "estimator": HGB, "search": {"lerning_rate": {"choice": [0.1]}}})
        )


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ({"kind": "sklearn"}, "kind sklearn needs `estimator: package.module.Class`"),
        ({"kind": "sklearn", "estimator": "sklearn.ensemble.NoSuchBoosting"}, "NoSuchBoosting' is not a"),
        ({"kind": "sklearn", "estimator": "os.path"}, "not a scikit-learn-compatible estimator class"),
        ({"kind": "sklearn", "estimator": "no_such_pkg.Model"}, "cannot import 'no_such_pkg'"),
        ({"kind": "random_forest", "estimator": HGB}, "estimator is only for kind sklearn"),
    ],
)
def test_a_wrong_estimator_is_refused_when_the_file_is_read(model: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]") as err:
        parse_pipeline(_doc(model))
    assert words in str(err.value)


def test_validate_reports_the_typo_from_the_command_line(tmp_path: Path) -> None:
    doc = yaml.safe_load((PIPELINES / "breast_cancer_hgb.yaml").read_text())
    doc["models"][0]["params"]["l2_regularisation"] = 1.0
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "models[0]" in result.output and "l2_regularisation" in result.output
    assert "Traceback" not in result.output


def test_the_shipped_pipeline_validates() -> None:
    raw = yaml.safe_load((PIPELINES / "breast_cancer_hgb.yaml").read_text())
    cfg = parse_pipeline(raw)
    assert cfg.models[0].kind == "sklearn" and cfg.models[0].estimator == HGB
    assert cfg.gate.min == {"accuracy": 0.95}
