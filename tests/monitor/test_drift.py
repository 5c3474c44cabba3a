"""The drift decision on its own: PSI for size, a significance test as evidence, mergeable batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raymlops.data.schema import TableSchema
from raymlops.evaluate.reference import build_reference
from raymlops.monitor import Thresholds, decide, psi
from raymlops.monitor._drift import batch_stats, finalize, merge_stats, spec_from_reference

SCHEMA = TableSchema(
    target="y",
    task="regression",
    features=["a", "b", "k"],
    categorical=["k"],
    column_types={"a": "float", "b": "float", "k": "category", "y": "float"},
)


def _frame(
    rows: int, seed: int, shift_a: float = 0.0, k_probs: tuple[float, float] = (0.5, 0.5)
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "a": rng.normal(size=rows) + shift_a,
            "b": rng.exponential(size=rows),
            "k": rng.choice(np.array(["p", "q"], dtype=object), size=rows, p=list(k_probs)),
        }
    )


@pytest.fixture(scope="module")
def reference() -> tuple[dict, pd.DataFrame]:
    train = _frame(20_000, 0)
    return build_reference(train, SCHEMA, np.random.default_rng(0).normal(size=2000))


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() -> None:
    assert psi([0.25] * 4, [25, 25, 25, 25]) == pytest.approx(0)
    assert psi([0.25] * 4, [10, 20, 30, 40]) < psi([0.25] * 4, [1, 9, 30, 60])


def test_the_decision_needs_both_a_large_psi_and_a_significant_test() -> None:
    t = Thresholds()
    assert decide(0.5, 1e-9, 0.3, t) == "drift"
    assert decide(0.5, 0.3, 0.3, t) == "warning"  # large PSI on too few rows to be sure
    assert decide(0.12, 1e-9, 0.05, t) == "warning"
    assert decide(0.01, 1e-9, 0.02, t) == "ok"  # significant but negligible: big samples do that
    assert decide(0.01, 1e-9, 0.15, t) == "warning"  # a real move inside the bins


def test_shifted_numeric_and_categorical_features_drift_and_the_rest_do_not(reference) -> None:
    ref, sample = reference
    current = _frame(5000, 1, shift_a=1.0, k_probs=(0.8, 0.2))
    result = finalize(batch_stats(current, spec_from_reference(ref)), ref, sample, Thresholds())
    by_name = {f["feature"]: f for f in result["features"]}
    assert result["drifted_features"] == ["a", "k"]
    assert by_name["k"]["chi2_pvalue"] < 1e-6 and by_name["k"]["ks_pvalue"] is None
    assert not by_name["b"]["drift"]


def test_batches_merge_to_the_same_counts_as_one_pass(reference) -> None:
    ref, _ = reference
    spec = spec_from_reference(ref)
    frame = _frame(3000, 2)
    whole = batch_stats(frame, spec)
    parts = None
    for chunk in np.array_split(np.arange(len(frame)), 4):
        parts = merge_stats(parts, batch_stats(frame.iloc[chunk], spec))
    assert parts is not None and parts["rows"] == whole["rows"] == 3000
    assert parts["numeric"]["a"]["counts"] == whole["numeric"]["a"]["counts"]
    assert parts["categorical"]["k"]["counts"] == whole["categorical"]["k"]["counts"]
    assert len(parts["sample"]) == 3000


def test_thresholds_come_from_the_pipeline_file() -> None:
    from raymlops.monitor import thresholds_for

    t = thresholds_for({"pipeline": {"monitor": {"psi_drift": 0.3, "psi_warning": 0.15, "ks_pvalue": 0.001}}})
    assert (t.psi_drift, t.psi_warning, t.pvalue) == (0.3, 0.15, 0.001)
    assert thresholds_for({}, psi_drift=0.5).psi_drift == 0.5
