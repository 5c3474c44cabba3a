"""Per-group metrics and the two fairness differences, checked on hand-made predictions."""

from __future__ import annotations

import numpy as np
import pytest

from raymlops.evaluate.fairness import MISSING_GROUP, fairness_report, group_labels


def _proba(pred: np.ndarray, k: int = 2) -> np.ndarray:
    out = np.zeros((len(pred), k))
    out[np.arange(len(pred)), pred] = 1.0
    return out


def test_binary_differences_match_their_definitions() -> None:
    # Group A: 40 rows, 10 predicted positive; group B: 60 rows, 45 predicted positive.
    groups = np.array(["A"] * 40 + ["B"] * 60)
    y = np.array([1] * 20 + [0] * 20 + [1] * 30 + [0] * 30)
    pred = np.array([1] * 8 + [0] * 12 + [1] * 2 + [0] * 18 + [1] * 27 + [0] * 3 + [1] * 18 + [0] * 12)
    report = fairness_report(groups, y, _proba(pred), "classification", [0, 1], column="sex")
    rows = {r["group"]: r for r in report["groups"]}
    assert rows["A"]["selection_rate"] == pytest.approx(10 / 40)
    assert rows["B"]["selection_rate"] == pytest.approx(45 / 60)
    assert report["demographic_parity_difference"] == pytest.approx(0.75 - 0.25)
    # TPR A 8/20 = 0.4, B 27/30 = 0.9 (gap 0.5); FPR A 2/20 = 0.1, B 18/30 = 0.6 (gap 0.5).
    assert rows["A"]["true_positive_rate"] == pytest.approx(0.4)
    assert rows["B"]["false_positive_rate"] == pytest.approx(0.6)
    assert report["equalized_odds_difference"] == pytest.approx(0.5)
    assert report["sensitive"] == "sex" and report["positive_class"] == "1"


def test_a_model_that_ignores_the_group_and_is_equally_right_has_zero_differences() -> None:
    groups = np.array(["x", "y"] * 50)
    y = np.array([0, 0, 1, 1] * 25)
    report = fairness_report(groups, y, _proba(y), "classification", [0, 1])
    assert report["demographic_parity_difference"] == pytest.approx(0.0)
    assert report["equalized_odds_difference"] == pytest.approx(0.0)


def test_tiny_groups_are_listed_but_left_out_of_the_differences() -> None:
    groups = np.array(["big1"] * 50 + ["big2"] * 50 + ["tiny"] * 3)
    y = np.zeros(103, dtype=int)
    pred = np.array([0] * 100 + [1] * 3)
    report = fairness_report(groups, y, _proba(pred), "classification", [0, 1], min_group_size=10)
    assert report["small_groups"] == ["tiny"]
    assert {r["group"] for r in report["groups"]} == {"big1", "big2", "tiny"}
    assert report["demographic_parity_difference"] == pytest.approx(0.0)


def test_multiclass_reports_the_worst_class() -> None:
    groups = np.array(["A"] * 30 + ["B"] * 30)
    y = np.tile([0, 1, 2], 20)
    pred = np.concatenate([np.zeros(30, dtype=int), np.tile([0, 1, 2], 10)])  # A always gets class 0
    report = fairness_report(groups, y, _proba(pred, 3), "classification", ["r", "g", "b"])
    assert report["demographic_parity_difference"] == pytest.approx(1 - 1 / 3)
    assert report["worst_class"]["demographic_parity_difference"] == "r"
    assert set(report["per_class"]) == {"r", "g", "b"}


def test_regression_has_per_group_errors_but_no_parity_differences() -> None:
    groups = np.array(["A"] * 20 + ["B"] * 20)
    y = np.arange(40, dtype=float)
    pred = y + np.where(groups == "A", 1.0, -3.0)
    report = fairness_report(groups, y, pred, "regression")
    rows = {r["group"]: r for r in report["groups"]}
    assert rows["A"]["mae"] == pytest.approx(1.0) and rows["B"]["mae"] == pytest.approx(3.0)
    assert report["demographic_parity_difference"] is None and "classification only" in report["note"]


def test_many_valued_numbers_are_grouped_in_quartiles_and_nulls_get_their_own_group() -> None:
    values = np.concatenate([np.arange(100, dtype=float), [np.nan]])
    labels = group_labels(values)
    assert len(set(labels)) == 5 and labels[-1] == MISSING_GROUP
