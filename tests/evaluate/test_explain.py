"""Permutation importance and partial dependence on raw columns, for classification and regression."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from raymlops.evaluate.explain import explain_model, partial_dependence, permutation_importance

from . import toy_bundle, toy_frame


@pytest.fixture(scope="module")
def classifier(ray_session: Any) -> Any:
    return toy_bundle(toy_frame(seed=0))


def test_importance_ranks_the_driving_feature_first_and_noise_near_zero(classifier: Any) -> None:
    held_out = toy_frame(600, seed=1)
    result = permutation_importance(classifier, held_out, held_out["y"].to_numpy(), "accuracy", n_repeats=3)
    names = [r["feature"] for r in result["features"]]
    # One entry per raw column: the one-hot encoded category is shuffled as one feature.
    assert sorted(names) == ["c", "x0", "x1"]
    by_name = {r["feature"]: r for r in result["features"]}
    assert names[0] == "x0" and by_name["x0"]["importance"] > 0.2
    assert abs(by_name["x1"]["importance"]) < 0.03
    assert result["metric"] == "accuracy" and result["rows"] == 600 and result["baseline"] > 0.85


def test_importance_of_a_lower_is_better_metric_is_still_positive_for_important_features(
    classifier: Any,
) -> None:
    held_out = toy_frame(400, seed=2)
    result = permutation_importance(classifier, held_out, held_out["y"].to_numpy(), "log_loss", n_repeats=2)
    assert result["features"][0]["feature"] == "x0" and result["features"][0]["importance"] > 0


def test_partial_dependence_follows_the_feature_effect(classifier: Any) -> None:
    held_out = toy_frame(300, seed=3)
    curves = {c["feature"]: c for c in partial_dependence(classifier, held_out, ["x0", "c"], grid_points=10)}
    x0 = curves["x0"]
    assert x0["kind"] == "numeric" and len(x0["grid"]) == 10
    positive = np.asarray(x0["average"]["1"])
    assert positive[-1] - positive[0] > 0.5  # more x0, more class 1
    cat = curves["c"]
    assert cat["kind"] == "categorical" and sorted(cat["grid"]) == ["a", "b", "c"]
    by_value = dict(zip(cat["grid"], cat["average"]["1"], strict=True))
    assert by_value["a"] > by_value["b"]


def test_regression_models_are_explained_the_same_way(ray_session: Any) -> None:
    bundle = toy_bundle(toy_frame(seed=4, task="regression"), task="regression")
    held_out = toy_frame(400, seed=5, task="regression")
    result = explain_model(bundle, held_out, held_out["y"].to_numpy(), "rmse", top=2, n_repeats=2)
    assert result["importance"]["metric"] == "rmse"
    assert result["importance"]["features"][0]["feature"] == "x0"
    assert [c["feature"] for c in result["partial_dependence"]][0] == "x0"
    assert set(result["partial_dependence"][0]["average"]) == {"prediction"}
