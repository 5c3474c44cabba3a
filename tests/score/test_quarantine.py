"""Rows that fail the model's schema go to quarantine with a reason; every other row is scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from raymlops.cli import app
from raymlops.score import REASON, ROW, SOURCE, score

from . import TrainedModel, make_rows, read_rejected, read_scored, trained_model

runner = CliRunner()


@pytest.fixture(scope="module")
def model(ray_session, tmp_path_factory) -> TrainedModel:
    return trained_model(tmp_path_factory.getbasetemp() / "score-model")


def _dirty_csv(path: Path) -> dict[int, str]:
    """A CSV of 1000 rows with known bad rows; returns id -> the start of the expected reason."""
    rows = make_rows(1000, seed=3)
    text = rows.astype(object)
    bad = {
        10: ("x1", "", "x1: null value"),  # empty field -> null
        250: ("x2", "abc", "x2: 'abc' is not a number"),  # a word in a numeric column
        500: ("x3", "inf", "x3: not a finite number"),
        777: ("color", "purple", "color: unknown category"),  # rejected only with --unknown-category reject
        901: ("x1", "NaN", "x1: null value"),
    }
    for row_id, (col, value, _) in bad.items():
        text.loc[row_id, col] = value
    lines = [",".join(rows.columns)]
    for i, r in enumerate(text.itertuples(index=False)):
        lines.append(",".join(str(v) for v in r))
        if i == 600:
            lines.append("123456,1.0,2.0")  # a malformed line: too few fields
    path.write_text("\n".join(lines) + "\n")
    return {k: v[2] for k, v in bad.items()}


def test_known_bad_rows_are_quarantined_exactly_with_reasons(model, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    expected = _dirty_csv(tmp_path / "in" / "a.csv")
    # A second file lacks a feature column entirely: all of its rows are quarantined, nothing else fails.
    make_rows(40, seed=4, start_id=5000).drop(columns=["x3"]).to_csv(tmp_path / "in" / "b.csv", index=False)

    result = runner.invoke(
        app,
        [
            "score",
            model.ref,
            "--store",
            model.store,
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
            "--unknown-category",
            "reject",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    n_bad = len(expected) + 1 + 40  # the bad values, the malformed line, the file without x3
    assert summary["rows_in"] == 1000 + 1 + 40
    assert summary["rows_rejected"] == n_bad
    assert summary["rows_scored"] == 1000 - len(expected)
    assert summary["rows_in"] == summary["rows_scored"] + summary["rows_rejected"]

    rejected = read_rejected(tmp_path / "out" / "_rejected")
    assert len(rejected) == n_bad and {REASON, SOURCE, ROW} <= set(rejected.columns)
    ids = pd.to_numeric(rejected["id"])  # a file re-read as text keeps its raw text in quarantine
    by_id = dict(zip(ids.fillna(-1).astype(int), rejected[REASON], strict=True))
    for row_id, reason in expected.items():
        assert by_id[row_id] == reason
    assert rejected.loc[ids == 250, "x2"].item() == "abc"  # the raw value is kept for repair
    malformed = rejected[rejected[REASON].str.startswith("malformed CSV row")]
    assert len(malformed) == 1 and "expected 6 fields, found 3" in malformed[REASON].item()
    missing = rejected[ids >= 5000]
    assert len(missing) == 40 and set(missing[REASON]) == {"missing feature column(s): x3"}
    assert set(missing[SOURCE]) == {str(tmp_path / "in" / "b.csv")}

    scored = read_scored(tmp_path / "out")
    assert set(scored["id"]) == set(range(1000)) - set(expected)
    assert scored["x1"].dtype == np.float64 and scored["prediction"].isin([0, 1]).all()


def test_unknown_categories_are_scored_by_default(model, tmp_path: Path) -> None:
    rows = make_rows(300, seed=5)
    rows.loc[[3, 4], "color"] = "purple"
    rows.loc[7, "x2"] = np.nan
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp_path / "in.parquet")
    summary = score(
        model.ref, str(tmp_path / "in.parquet"), str(tmp_path / "out"), store=model.store, progress=False
    )
    assert (summary["rows_in"], summary["rows_scored"], summary["rows_rejected"]) == (300, 299, 1)
    rejected = read_rejected(tmp_path / "out" / "_rejected")
    assert rejected[["id", REASON, ROW]].values.tolist() == [[7, "x2: null value", 7]]
    assert {3, 4} <= set(read_scored(tmp_path / "out")["id"])
