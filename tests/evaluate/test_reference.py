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


def _sent_rows(ds: object, cap: int, admit: int | None) -> int:
    """Sample rows the pass's tasks send to the driver."""
    import pickle

    from raymlops.evaluate.reference import _reference_batch

    parts = ds.map_batches(  # type: ignore[attr-defined]
        _reference_batch,
        batch_format="pandas",
        batch_size=2000,
        fn_kwargs={"schema": SCHEMA, "seed": 0, "cap": cap, "admit": admit},
    )
    return sum(len(pickle.loads(r["partial"]).sample.keys) for r in parts.iter_rows())


def test_large_pass_sends_the_driver_its_sample_not_its_rows(ray_session: object) -> None:
    import ray

    from raymlops.evaluate.reference import admit_limit, reference_partial

    frame = _frame(20_000).assign(y=0)
    ds = ray.data.from_pandas(frame).repartition(10)
    cap = 1000
    unlimited = reference_partial(ds, SCHEMA, cap=cap, batch_size=2000)
    limited = reference_partial(ds, SCHEMA, cap=cap, batch_size=2000, rows=len(frame))
    # The same rows, the cap lowest keys of all 20k, as when every batch sent up to cap rows...
    np.testing.assert_array_equal(limited.sample.keys, unlimited.sample.keys)
    assert limited.rows == unlimited.rows == 20_000 and len(limited.sample.keys) == cap
    # ... but the tasks sent about cap rows in all, not 10 batches x cap.
    assert _sent_rows(ds, cap, None) == 10_000
    assert cap <= _sent_rows(ds, cap, admit_limit(len(frame), cap)) < 1.5 * cap


def test_duplicate_rows_that_starve_the_limit_still_give_the_exact_sample(ray_session: object) -> None:
    import ray

    from raymlops.evaluate.reference import admit_limit, reference_partial

    # 19,000 copies of one row share one key: the limit lets through fewer rows than the cap,
    # so the pass runs again without it and keeps the same sample as an unlimited pass.
    frame = pd.concat([_frame(1000), _frame(1)[["amount", "pixels", "color"]].iloc[[0] * 19_000]])
    frame = frame.assign(y=0).reset_index(drop=True)
    ds = ray.data.from_pandas(frame).repartition(10)
    assert _sent_rows(ds, 2000, admit_limit(len(frame), 2000)) < 2000  # the limit starves
    unlimited = reference_partial(ds, SCHEMA, cap=2000, batch_size=2000)
    limited = reference_partial(ds, SCHEMA, cap=2000, batch_size=2000, rows=len(frame))
    assert limited.sample.exact and len(limited.sample.keys) == len(unlimited.sample.keys)
    np.testing.assert_array_equal(limited.sample.keys, unlimited.sample.keys)
