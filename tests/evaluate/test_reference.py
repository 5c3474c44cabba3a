"""Reference statistics: enough to compute PSI and KS later, and they survive a round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raymlops.data.schema import TableSchema
from raymlops.errors import NotFoundError
from raymlops.evaluate.reference import (
    bin_counts,
    build_reference,
    load_reference,
    numeric_edges,
    write_reference,
)

SCHEMA = TableSchema(
    target="y",
    task="classification",
    features=["amount", "pixels", "color"],
    categorical=["color"],
    column_types={"amount": "float", "pixels": "int", "color": "category", "y": "int"},
    classes=[0, 1],
    categories={"color": ["blue", "red"]},
)


def _frame(rows: int = 20_000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    amount = rng.lognormal(size=rows)
    amount[:200] = np.nan
    return pd.DataFrame(
        {
            "amount": amount,
            "pixels": rng.choice([0, 0, 0, 3, 16], size=rows),  # a spike at zero, few values
            "color": rng.choice(np.array(["red", "blue"], dtype=object), size=rows, p=[0.7, 0.3]),
        }
    )


def test_numeric_features_get_decile_bins_and_discrete_ones_a_bin_per_value() -> None:
    frame = _frame()
    proba = np.tile([[0.2, 0.8], [0.9, 0.1]], (50, 1))
    ref, sample = build_reference(frame, SCHEMA, proba, sample_size=5000)
    amount = ref["features"]["amount"]
    assert len(amount["bin_edges"]) == 9 and sum(amount["bin_fractions"]) == pytest.approx(1)
    assert max(amount["bin_fractions"]) < 0.11  # deciles: every bin holds about a tenth
    assert amount["null_rate"] == pytest.approx(0.01)
    assert amount["quantiles"]["0.5"] == pytest.approx(np.nanmedian(frame["amount"]))
    assert ref["features"]["pixels"]["bin_edges"] == [0.0, 3.0, 16.0]
    assert ref["features"]["color"]["frequencies"]["red"] == pytest.approx(0.7, abs=0.02)
    assert ref["prediction"]["frequencies"] == {"0": 0.5, "1": 0.5}
    assert len(sample) == 5000 and list(sample.columns) == ["amount", "pixels", "color"]


def test_right_closed_bins_keep_a_spike_in_its_own_bin() -> None:
    values = np.array([0.0] * 90 + list(range(1, 11)), dtype=float)
    edges = numeric_edges(values)
    counts = bin_counts(values, edges)
    assert counts[0] == 90 and counts.sum() == 100


def test_reference_round_trips_through_the_version_folder(tmp_path: Path) -> None:
    ref, sample = build_reference(_frame(500), SCHEMA, np.tile([[0.5, 0.5]], (10, 1)))
    assert write_reference(tmp_path, ref, sample) == ["reference.json", "reference_sample.parquet"]
    loaded, loaded_sample = load_reference(tmp_path)
    assert loaded["features"].keys() == ref["features"].keys()
    assert loaded_sample is not None and len(loaded_sample) == 500


def test_a_version_without_reference_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="rerun its pipeline"):
        load_reference(tmp_path)
