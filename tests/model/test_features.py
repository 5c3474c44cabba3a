"""The feature plan gives every caller the same float32 matrix, whatever the batch size."""

from __future__ import annotations

import numpy as np
import pytest

from raymlops.model import TableSchema, check_rows
from raymlops.model._features import _COMPILED_ROWS, FeaturePlan, PlanStep


def _plan(k: int, seed: int) -> FeaturePlan:
    rng = np.random.default_rng(seed)
    return FeaturePlan(
        [PlanStep(f"f{j}", scale=float(rng.lognormal()), shift=float(rng.normal(scale=5))) for j in range(k)]
    )


@pytest.mark.parametrize("rows", [3, _COMPILED_ROWS + 5])
def test_batch_scoring_and_serving_see_the_same_bits(rows: int) -> None:
    pytest.importorskip("numba")
    plan = _plan(7, seed=0)
    rng = np.random.default_rng(1)
    numeric = np.asfortranarray(rng.normal(scale=1e3, size=(rows, 7)))
    got = plan.apply(numeric)
    expected = (numeric * plan._scale + plan._shift).astype(np.float32)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got.view(np.int32), expected.view(np.int32))
    # one row at a time, as serving sends them, gives the same rows
    assert np.array_equal(plan.apply(numeric[5:6]), got[5:6])


def test_a_bad_value_in_a_large_batch_is_named_and_its_row_alone_left_out() -> None:
    feats = ["a", "b"]
    schema = TableSchema(
        target="y",
        task="classification",
        features=feats,
        categorical=[],
        column_types={"a": "float", "b": "float", "y": "int"},
        classes=[0, 1],
    )
    n = _COMPILED_ROWS + 1
    a = np.arange(n, dtype=np.float64)
    b = np.ones(n)
    b[7] = np.inf
    check = check_rows({"a": a, "b": b}, schema)
    assert int((~check.valid).sum()) == 1 and not check.valid[7]
    assert check.reasons is not None and check.reasons[7] == "b: not a finite number"
    assert np.array_equal(check.numeric[:, 0], a)
