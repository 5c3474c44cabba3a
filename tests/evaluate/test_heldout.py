"""Held-out metrics, the bootstrap, fairness and reference statistics from partials merged across batches.

Every number must be what scikit-learn (or the in-memory functions) computes on the whole arrays,
whatever the batches were: the same test split cut into other blocks must give the same report.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from raymlops.data.schema import TableSchema
from raymlops.evaluate import fairness as fairness_mod
from raymlops.evaluate import heldout
from raymlops.evaluate.fairness import FairnessPartial, fairness_report
from raymlops.evaluate.heldout import MetricsPartial, row_keys, sample_keys
from raymlops.evaluate.metrics import bootstrap_interval, compute_metrics, confusion
from raymlops.evaluate.reference import (
    PredictionPartial,
    ReferencePartial,
    build_reference,
    build_reference_from_partials,
)
from raymlops.monitor._drift import Thresholds, batch_stats, finalize, spec_from_reference

RTOL = 1e-9


def _classification(seed: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.2
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    proba = proba.astype(np.float32)  # float32 like ONNX / Keras outputs
    proba[: n // 10] = np.round(proba[: n // 10], 1)  # many tied scores
    return y, proba


def _cuts(n: int, seed: int) -> list[tuple[int, int]]:
    """A random block layout of n rows: 1 to 12 batches of uneven sizes (some empty)."""
    rng = np.random.default_rng(seed)
    points = np.sort(rng.integers(0, n + 1, rng.integers(0, 12)))
    edges = [0, *points.tolist(), n]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _merged(y: np.ndarray, scores: np.ndarray, task: str, k: int, layout: int, **kw: Any) -> MetricsPartial:
    keys = np.arange(len(y), dtype=np.uint64) * np.uint64(2654435761)
    parts = [
        MetricsPartial.from_batch(y[a:b], scores[a:b], task, k, keys[a:b], **kw)
        for a, b in _cuts(len(y), layout)
    ]
    order = np.random.default_rng(layout).permutation(len(parts))
    merged = parts[order[0]]
    for i in order[1:]:
        merged = merged.merge(parts[i])
    return merged


def _sklearn_classification(y: np.ndarray, proba: np.ndarray, k: int) -> dict[str, float]:
    p = np.asarray(proba, dtype=float)
    p = p / p.sum(axis=1, keepdims=True)
    pred = p.argmax(axis=1)
    labels = np.arange(k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {
            "accuracy": skm.accuracy_score(y, pred),
            "f1_macro": skm.f1_score(y, pred, average="macro", labels=labels, zero_division=0),
            "log_loss": skm.log_loss(y, np.clip(p, 1e-15, 1), labels=labels),
        }
        if k == 2:
            out["roc_auc"] = skm.roc_auc_score(y, p[:, 1])
        else:
            norm = p / p.sum(axis=1, keepdims=True)
            out["roc_auc"] = skm.roc_auc_score(y, norm, multi_class="ovr", labels=labels)
    return out


@pytest.mark.parametrize("k", [2, 3, 6])
@pytest.mark.parametrize("layout", [0, 1, 2])
def test_classification_partials_equal_sklearn_on_the_whole_arrays(k: int, layout: int) -> None:
    y, proba = _classification(seed=k, n=4000, k=k)
    merged = _merged(y, proba, "classification", k, layout)
    got = merged.finalize()
    expected = _sklearn_classification(y, proba, k)
    assert list(got) == ["accuracy", "f1_macro", "log_loss", "roc_auc"]
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=RTOL, err_msg=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        today = compute_metrics("classification", y, proba, k)
    np.testing.assert_allclose([got[m] for m in today], list(today.values()), rtol=RTOL)
    assert merged.confusion_matrix() == confusion(y, proba.argmax(axis=1), k)
    assert merged.auc_exact


def test_an_absent_class_drops_roc_auc_and_a_never_seen_class_scores_f1_zero_like_sklearn() -> None:
    y, proba = _classification(seed=9, n=900, k=4)
    y = np.where(y == 3, 0, y)  # class 3 is never true
    proba[:, 2] = 0.0  # class 2 is never predicted
    got = _merged(y, proba, "classification", 4, 3).finalize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        today = compute_metrics("classification", y, proba, 4)
    assert "roc_auc" not in got and set(got) == set(today)
    np.testing.assert_allclose([got[m] for m in today], list(today.values()), rtol=RTOL)


@pytest.mark.parametrize("layout", [0, 4, 5])
def test_regression_partials_equal_sklearn(layout: int) -> None:
    rng = np.random.default_rng(layout)
    y = 1e4 + 3 * rng.normal(size=3000)  # a large offset: R2 must not lose digits to cancellation
    pred = y + rng.normal(size=3000)
    got = _merged(y, pred, "regression", 0, layout).finalize()
    np.testing.assert_allclose(got["rmse"], np.sqrt(skm.mean_squared_error(y, pred)), rtol=RTOL)
    np.testing.assert_allclose(got["mae"], skm.mean_absolute_error(y, pred), rtol=RTOL)
    np.testing.assert_allclose(got["r2"], skm.r2_score(y, pred), rtol=RTOL)


def test_a_constant_target_scores_r2_like_sklearn() -> None:
    y = np.full(50, 3.0)
    assert _merged(y, y.copy(), "regression", 0, 1).finalize()["r2"] == skm.r2_score(y, y) == 1.0
    assert _merged(y, y + 1, "regression", 0, 2).finalize()["r2"] == skm.r2_score(y, y + 1) == 0.0


@pytest.mark.parametrize("metric", ["accuracy", "roc_auc", "log_loss"])
def test_the_bootstrap_interval_does_not_depend_on_the_block_layout_or_row_order(metric: str) -> None:
    y, proba = _classification(seed=1, n=1500, k=3)
    kw = {"interval_metric": metric, "rounds": 60, "seed": 7}
    first = _merged(y, proba, "classification", 3, 0, **kw).interval()
    for layout in (1, 2, 3):
        again = _merged(y, proba, "classification", 3, layout, **kw).interval()
        assert again["rounds"] == first["rounds"] == 60
        np.testing.assert_allclose([again["low"], again["high"]], [first["low"], first["high"]], rtol=1e-12)
    # Rows keep their weights when the split is read in another order.
    perm = np.random.default_rng(0).permutation(len(y))
    keys = np.arange(len(y), dtype=np.uint64) * np.uint64(2654435761)
    shuffled = MetricsPartial.from_batch(
        y[perm], proba[perm], "classification", 3, keys[perm], **kw
    ).interval()
    np.testing.assert_allclose([shuffled["low"], shuffled["high"]], [first["low"], first["high"]], rtol=1e-12)


def test_the_bootstrap_is_seeded_and_agrees_with_the_in_memory_interval() -> None:
    y, proba = _classification(seed=2, n=3000, k=2)
    a = _merged(y, proba, "classification", 2, 0, interval_metric="accuracy", rounds=150, seed=0).interval()
    b = _merged(y, proba, "classification", 2, 1, interval_metric="accuracy", rounds=150, seed=0).interval()
    c = _merged(y, proba, "classification", 2, 0, interval_metric="accuracy", rounds=150, seed=1).interval()
    assert a == b and a != c
    accuracy = compute_metrics("classification", y, proba, 2)["accuracy"]
    assert a["low"] < accuracy < a["high"] and a["level"] == 0.95
    classic = bootstrap_interval("classification", y, proba, "accuracy", 2, rounds=150)
    assert abs(a["low"] - classic["low"]) < 0.01 and abs(a["high"] - classic["high"]) < 0.01


def test_a_regression_interval_brackets_the_metric() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(size=2000)
    pred = y + rng.normal(scale=0.5, size=2000)
    for metric in ("rmse", "mae", "r2"):
        merged = _merged(y, pred, "regression", 0, 2, interval_metric=metric, rounds=100)
        interval, value = merged.interval(), merged.finalize()[metric]
        assert interval["low"] < value < interval["high"] and interval["rounds"] == 100
        classic = bootstrap_interval("regression", y, pred, metric, rounds=100)
        assert abs(interval["high"] - interval["low"]) == pytest.approx(
            classic["high"] - classic["low"], rel=0.35
        )


def test_poisson_weights_are_a_function_of_the_row_key_only() -> None:
    keys = np.arange(20_000, dtype=np.uint64)
    w = heldout.poisson_weights(keys, seed=5, replicates=range(3))
    assert w.shape == (3, 20_000)
    assert abs(w.mean() - 1) < 0.02 and abs(w.var() - 1) < 0.05  # Poisson(1)
    assert (heldout.poisson_weights(keys[::-1], 5, [1])[0] == w[1][::-1]).all()


def test_auc_past_the_exact_limit_comes_from_logit_bins_and_stays_close(monkeypatch: Any) -> None:
    monkeypatch.setattr(heldout, "EXACT_AUC_MAX", 500)
    y, proba = _classification(seed=4, n=5000, k=3)
    proba = proba.astype(np.float64) + np.random.default_rng(0).uniform(0, 1e-6, proba.shape)
    merged = _merged(y, proba, "classification", 3, 1)
    assert not merged.auc_exact
    expected = _sklearn_classification(y, proba, 3)["roc_auc"]
    assert merged.finalize()["roc_auc"] == pytest.approx(expected, abs=2e-4)
    again = _merged(y, proba, "classification", 3, 2).finalize()["roc_auc"]
    assert again == merged.finalize()["roc_auc"]  # the bins do not depend on the layout


def test_row_keys_follow_the_content_not_the_position_or_dtype() -> None:
    a = pd.DataFrame({"x": [1, 2, 3], "c": ["a", None, "b"]})
    b = pd.DataFrame({"c": ["b", "a", None], "x": [3.0, 1.0, 2.0]})  # other order, ints read as floats
    ka, kb = row_keys(a), row_keys(b)
    assert ka[0] == kb[1] and ka[1] == kb[2] and ka[2] == kb[0]
    assert len(set(ka.tolist())) == 3
    assert (sample_keys(ka, 1) != sample_keys(ka, 2)).all()


# ---- fairness ---------------------------------------------------------------------------------------


def _assert_same(expected: Any, got: Any, path: str = "") -> None:
    if isinstance(expected, dict):
        assert list(expected) == list(got), (path, list(expected), list(got))
        for key in expected:
            _assert_same(expected[key], got[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert len(expected) == len(got), path
        for i, (a, b) in enumerate(zip(expected, got, strict=True)):
            _assert_same(a, b, f"{path}[{i}]")
    elif isinstance(expected, float):
        np.testing.assert_allclose(got, expected, rtol=RTOL, err_msg=path)
    else:
        assert expected == got, (path, expected, got)


def _fairness_partial(
    sensitive: pd.Series, y: np.ndarray, scores: np.ndarray, task: str, k: int
) -> FairnessPartial:
    parts = [
        FairnessPartial.from_batch(sensitive.iloc[a:b], y[a:b], scores[a:b], task, k)
        for a, b in _cuts(len(y), 11)
        if b > a
    ]
    merged = parts[-1]
    for p in parts[-2::-1]:
        merged = merged.merge(p)
    return merged


_SENSITIVE = {
    "text with nulls": lambda rng, n: pd.Series(rng.choice(np.array(["f", "m", "x", None], dtype=object), n)),
    "few integers": lambda rng, n: pd.Series(rng.integers(1, 4, n)),
    "ages with nulls": lambda rng, n: pd.Series(
        np.where(rng.random(n) < 0.05, np.nan, rng.integers(18, 90, n))
    ),
    "continuous": lambda rng, n: pd.Series(40 + 12 * rng.normal(size=n)),
    "booleans": lambda rng, n: pd.Series(rng.random(n) < 0.3),
}


@pytest.mark.parametrize("column", list(_SENSITIVE))
@pytest.mark.parametrize("task,k", [("classification", 2), ("classification", 4), ("regression", 0)])
def test_fairness_from_merged_counts_equals_the_report_on_whole_arrays(
    column: str, task: str, k: int
) -> None:
    rng = np.random.default_rng(len(column) + k)
    n = 2500
    sensitive = _SENSITIVE[column](rng, n)
    if task == "classification":
        y = rng.integers(0, k, n)
        scores = rng.dirichlet(np.ones(k), n)
    else:
        y = rng.normal(size=n)
        scores = y + rng.normal(size=n)
    classes = [f"c{i}" for i in range(k)] if k else None
    expected = fairness_report(sensitive, y, scores, task, classes, column="s", min_group_size=30)
    got = _fairness_partial(sensitive, y, scores, task, k).finalize(classes, column="s", min_group_size=30)
    _assert_same(expected, got)


def test_a_numeric_column_with_too_many_values_is_binned_from_rounded_values(monkeypatch: Any) -> None:
    monkeypatch.setattr(fairness_mod, "GROUP_VALUES_MAX", 25)
    rng = np.random.default_rng(5)
    n = 3000
    sensitive = pd.Series(rng.integers(18, 90, n))  # <= 4 significant digits: rounding loses nothing
    y = rng.integers(0, 2, n)
    scores = rng.dirichlet(np.ones(2), n)
    merged = _fairness_partial(sensitive, y, scores, "classification", 2)
    assert merged.exact is None  # past the cap
    _assert_same(
        fairness_report(sensitive, y, scores, "classification", [0, 1]),
        merged.finalize([0, 1]),
    )


# ---- reference statistics ---------------------------------------------------------------------------


def _reference_inputs(n: int, seed: int) -> tuple[pd.DataFrame, TableSchema]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x0": np.where(rng.random(n) < 0.02, np.nan, rng.normal(size=n)),
            "few": rng.integers(0, 6, n).astype(float),
            "c": rng.choice(np.array(["a", "b", "c", None], dtype=object), n),
            "y": rng.integers(0, 3, n),
        }
    )
    schema = TableSchema(
        target="y",
        task="classification",
        features=["x0", "few", "c"],
        categorical=["c"],
        column_types={"x0": "float", "few": "float", "c": "category", "y": "int"},
        classes=[0, 1, 2],
        categories={"c": ["a", "b", "c"]},
    )
    return frame, schema


def _reference_partial(frame: pd.DataFrame, schema: TableSchema, cap: int) -> ReferencePartial:
    parts = [
        ReferencePartial.from_batch(
            frame.iloc[a:b], schema, sample_keys(row_keys(frame.iloc[a:b]), 0), cap=cap
        )
        for a, b in _cuts(len(frame), 6)
    ]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    return merged


def _prediction_partial(scores: np.ndarray, task: str, k: int) -> PredictionPartial:
    keys = np.arange(len(scores), dtype=np.uint64)
    parts = [PredictionPartial.from_batch(scores[a:b], task, k, keys[a:b]) for a, b in _cuts(len(scores), 8)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    return merged


def test_reference_from_partials_equals_the_in_memory_reference_on_small_data() -> None:
    frame, schema = _reference_inputs(4000, 0)
    scores = np.random.default_rng(1).dirichlet(np.ones(3), 700)
    expected, expected_sample = build_reference(frame, schema, scores)
    got, sample = build_reference_from_partials(
        _reference_partial(frame, schema, 100_000), schema, _prediction_partial(scores, "classification", 3)
    )
    assert got["quantiles_exact"] is True and got["quantile_rows"] == 4000
    for key in ("format", "rows", "bins", "task", "target", "sample"):
        assert got[key] == expected[key]
    for name in ("x0", "few"):
        _assert_same(expected["features"][name], got["features"][name])
    cat_e, cat_g = expected["features"]["c"], got["features"]["c"]
    assert (
        cat_g["frequencies"] == pytest.approx(cat_e["frequencies"]) and cat_g["distinct"] == cat_e["distinct"]
    )
    assert cat_g["null_rate"] == pytest.approx(cat_e["null_rate"]) and cat_g["other_fraction"] == 0.0
    _assert_same(expected["prediction"], got["prediction"])
    # The sample holds the same rows (all of them here), in another order.
    assert list(sample.columns) == list(expected_sample.columns)
    assert sorted(sample["x0"].fillna(-99)) == sorted(expected_sample["x0"].fillna(-99))


def test_regression_prediction_statistics_match_and_monitor_reads_the_reference() -> None:
    frame, schema = _reference_inputs(1500, 2)
    schema = TableSchema(**{**schema.to_dict(), "task": "regression", "classes": None})
    preds = np.random.default_rng(3).normal(size=900)
    expected, _ = build_reference(frame, schema, preds)
    got, sample = build_reference_from_partials(
        _reference_partial(frame, schema, 100_000), schema, _prediction_partial(preds, "regression", 0)
    )
    exp_pred, got_pred = dict(expected["prediction"]), dict(got["prediction"])
    assert sorted(exp_pred.pop("sample")) == sorted(got_pred.pop("sample"))
    _assert_same(exp_pred, got_pred)
    # monitor works from it unchanged: the training rows themselves show no drift.
    stats = batch_stats(frame, spec_from_reference(got))
    result = finalize(stats, got, sample, Thresholds())
    assert result["drifted_features"] == [] and len(result["features"]) == 3


def test_a_reference_past_the_sample_cap_keeps_its_shape_and_stays_close() -> None:
    frame, schema = _reference_inputs(20_000, 4)
    scores = np.random.default_rng(5).dirichlet(np.ones(3), 300)
    expected, _ = build_reference(frame, schema, scores)
    partial = _reference_partial(frame, schema, 4000)
    got, sample = build_reference_from_partials(
        partial, schema, _prediction_partial(scores, "classification", 3)
    )
    assert got["quantiles_exact"] is False and len(sample) == 4000
    exact, approx = expected["features"]["x0"], got["features"]["x0"]
    assert set(exact) == set(approx) and len(approx["bin_edges"]) == len(exact["bin_edges"])
    for key in ("null_rate", "mean", "std", "min", "max"):
        assert approx[key] == pytest.approx(exact[key], rel=1e-9)  # exact at any size
    np.testing.assert_allclose(approx["bin_edges"], exact["bin_edges"], atol=0.08)
    np.testing.assert_allclose(approx["bin_fractions"], exact["bin_fractions"], atol=0.02)
    _assert_same(expected["features"]["few"], got["features"]["few"])  # few values: exact at any size
    # The same rows whatever the layout: the sample is the lowest hashes.
    again = ReferencePartial.from_batch(frame, schema, sample_keys(row_keys(frame), 0), cap=4000)
    pd.testing.assert_frame_equal(again.sample.frame(), partial.sample.frame())
