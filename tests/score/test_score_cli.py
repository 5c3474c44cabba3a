"""``raymlops score``: every row accounted for, the same predictions as the model, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from raymlops.cli import app
from raymlops.model import ModelBundle
from raymlops.score import MANIFEST_FILE, SUCCESS_FILE

from . import TrainedModel, make_rows, read_scored, trained_model, write_parquet_shards

runner = CliRunner()


@pytest.fixture(scope="module")
def model(ray_session, tmp_path_factory) -> TrainedModel:
    return trained_model(tmp_path_factory.getbasetemp() / "score-model")


def _score(model: TrainedModel, *args: str) -> tuple[int, dict, str]:
    result = runner.invoke(app, ["score", model.ref, "--store", model.store, "--json", *args])
    payload = json.loads(result.stdout) if result.exit_code == 0 else {}
    return result.exit_code, payload, result.output


def test_scores_a_folder_of_shards_with_the_models_own_predictions(model, tmp_path: Path) -> None:
    rows = make_rows(3000, seed=7)
    write_parquet_shards(rows, tmp_path / "in", shards=3, row_group_rows=250)
    code, summary, out = _score(
        model, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--unit-rows", "500"
    )
    assert code == 0, out
    assert summary["rows_in"] == summary["rows_scored"] == 3000 and summary["rows_rejected"] == 0
    assert summary["units"] == 6 and summary["scored_files"] == 6
    assert summary["rows_per_s"] > 0 and summary["model"] == model.ref

    scored = read_scored(tmp_path / "out").sort_values("id").reset_index(drop=True)
    assert scored["id"].tolist() == list(range(3000))  # every row once, none twice
    classes = [0, 1]
    assert list(scored.columns) == [*rows.columns, "prediction", *[f"proba_{c}" for c in classes]]
    # Batch scoring and serving share ModelBundle: the predictions are exactly the bundle's.
    expected = ModelBundle.load(model.ref, model.store).predict_frame(rows)
    assert (scored["prediction"].to_numpy() == expected["prediction"].to_numpy()).all()
    assert np.allclose(scored["proba_1"].to_numpy(), expected["proba_1"].to_numpy())
    pd.testing.assert_frame_equal(scored[rows.columns], rows)  # pass-through columns unchanged

    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    assert manifest["rows_in"] == 3000 and len(manifest["units"]) == 6
    assert (tmp_path / "out" / SUCCESS_FILE).exists()
    assert not (tmp_path / "out" / "_tmp").exists()


def test_keep_limits_the_pass_through_columns(model, tmp_path: Path) -> None:
    make_rows(400).to_csv(tmp_path / "in.csv", index=False)
    code, summary, out = _score(
        model, "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out"), "--keep", "id"
    )
    assert code == 0, out
    schema = pq.read_schema(tmp_path / "out" / "part-00000.parquet")
    assert schema.names == ["id", "prediction", "proba_0", "proba_1"]
    assert summary["rows_scored"] == 400


def test_refuses_to_overwrite_an_earlier_output_unless_asked(model, tmp_path: Path) -> None:
    make_rows(200).to_csv(tmp_path / "in.csv", index=False)
    args = ["--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out")]
    assert _score(model, *args)[0] == 0
    code, _, out = _score(model, *args)
    assert code == 2 and "--resume" in out and "--overwrite" in out
    code, summary, out = _score(model, *args, "--overwrite")
    assert code == 0, out
    assert summary["rows_in"] == 200 and len(read_scored(tmp_path / "out")) == 200


def test_refuses_a_folder_it_did_not_write(model, tmp_path: Path) -> None:
    make_rows(50).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    code, _, out = _score(
        model, "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out"), "--overwrite"
    )
    assert code == 2 and "not written by raymlops score" in out
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_a_feature_missing_from_every_file_is_an_error_not_a_quarantine(model, tmp_path: Path) -> None:
    make_rows(50).drop(columns=["x2"]).to_csv(tmp_path / "in.csv", index=False)
    code, _, out = _score(model, "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out"))
    assert code == 2
    assert "missing feature column(s) in every input file: x2" in out
    assert not (tmp_path / "out").exists()


def test_an_input_column_named_like_an_output_is_refused(model, tmp_path: Path) -> None:
    make_rows(20).assign(prediction=1).to_csv(tmp_path / "in.csv", index=False)
    code, _, out = _score(model, "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out"))
    assert code == 2 and "prediction" in out and "--keep" in out
