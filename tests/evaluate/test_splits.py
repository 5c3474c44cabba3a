"""The held-out split evaluated by Ray actors from merged partials, with real trained models.

What the pass reports must be what the in-memory functions (and scikit-learn) compute on the same
rows scored by the same models, and must not change when the split arrives in other blocks.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import ray
from sklearn import metrics as skm

from raymlops.errors import DataError
from raymlops.evaluate.fairness import fairness_report
from raymlops.evaluate.metrics import compute_metrics, confusion
from raymlops.evaluate.reference import (
    bin_counts,
    build_reference,
    build_reference_from_partials,
    exact_bin_counts,
    numeric_values,
    reference_partial,
)
from raymlops.evaluate.splits import BundleRef, encode_target, evaluate_split
from raymlops.model import ModelBundle
from raymlops.monitor._drift import Thresholds, finalize, spec_from_reference
from raymlops.registry import ModelStore

from . import toy_bundle, toy_frame
from .test_heldout import _assert_same

RTOL = 1e-9


@pytest.fixture(scope="module")
def classifiers(ray_session: Any) -> dict[str, ModelBundle]:
    return {"forest": toy_bundle(toy_frame(seed=0)), "other": toy_bundle(toy_frame(400, seed=8))}


def _scores(bundle: ModelBundle, frame: pd.DataFrame) -> np.ndarray:
    scored = bundle.score(frame)
    assert scored.n_rejected == 0
    return np.asarray(scored.scores)


def test_every_model_is_measured_like_sklearn_on_the_same_rows(classifiers: dict[str, ModelBundle]) -> None:
    test = toy_frame(3000, seed=1)
    ds = ray.data.from_pandas(test).repartition(5)
    result = evaluate_split(
        ds, classifiers, target="y", group_column="c", interval_metric="accuracy", seed=3, batch_size=700
    )
    y = test["y"].to_numpy()
    assert result.rows == 3000 and set(result.models) == {"forest", "other"}
    for name, bundle in classifiers.items():
        got = result.models[name]
        proba = _scores(bundle, test)
        p = proba / proba.sum(axis=1, keepdims=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = {
                "accuracy": skm.accuracy_score(y, p.argmax(axis=1)),
                "f1_macro": skm.f1_score(
                    y, p.argmax(axis=1), average="macro", labels=[0, 1], zero_division=0
                ),
                "log_loss": skm.log_loss(y, np.clip(p, 1e-15, 1), labels=[0, 1]),
                "roc_auc": skm.roc_auc_score(y, p[:, 1]),
            }
        assert list(got.metrics) == list(expected) and got.rows == 3000 and got.error is None
        np.testing.assert_allclose(list(got.metrics.values()), list(expected.values()), rtol=RTOL)
        np.testing.assert_allclose(
            list(got.metrics.values()),
            list(compute_metrics("classification", y, proba, 2).values()),
            rtol=RTOL,
        )
        assert got.confusion_matrix == confusion(y, proba.argmax(axis=1), 2)
        assert got.interval is not None and got.interval["rounds"] == 200
        assert got.interval["low"] < got.metrics["accuracy"] < got.interval["high"]
        expected_fairness = fairness_report(test["c"], y, proba, "classification", [0, 1], column="c")
        assert got.fairness is not None
        assert [g["group"] for g in got.fairness["groups"]] == ["a", "b", "c"]
        np.testing.assert_allclose(
            got.fairness["demographic_parity_difference"],
            expected_fairness["demographic_parity_difference"],
            rtol=RTOL,
        )
        np.testing.assert_allclose(
            [g["true_positive_rate"] for g in got.fairness["groups"]],
            [g["true_positive_rate"] for g in expected_fairness["groups"]],
            rtol=RTOL,
        )
        assert got.champion_record(4) == {"version": 4, "metrics": got.metrics}
    # A bounded sample of the raw rows for explanations, its size returned.
    assert result.sample_rows == len(result.sample) == 2000
    assert list(result.sample.columns) == ["c", "x0", "x1", "y"]
    assert set(result.sample["x0"]) <= set(test["x0"])
    frame, y_sample = result.explain_inputs("forest", classifiers["forest"])
    assert len(frame) == len(y_sample) == 2000

    # The same split in other blocks and batches: the same report, interval and sample; told the
    # split's size, each batch sends only its share of the sample, and it is still the same one.
    again = evaluate_split(
        ray.data.from_pandas(test.sample(frac=1.0, random_state=0)).repartition(2),
        classifiers,
        target="y",
        group_column="c",
        interval_metric="accuracy",
        seed=3,
        batch_size=1100,
        rows=len(test),
    )
    for name in classifiers:
        a, b = result.models[name], again.models[name]
        assert a.confusion_matrix == b.confusion_matrix and a.interval == b.interval
        np.testing.assert_allclose(list(a.metrics.values()), list(b.metrics.values()), rtol=1e-12)
        _assert_same(a.fairness, b.fairness)
    pd.testing.assert_frame_equal(result.sample, again.sample)


def test_regression_metrics_reference_and_split_drift(ray_session: Any) -> None:
    train = toy_frame(1500, seed=4, task="regression")
    bundle = toy_bundle(train, task="regression")
    test = toy_frame(2500, seed=5, task="regression")
    training_ref = reference_partial(
        ray.data.from_pandas(train).repartition(3), bundle.schema, batch_size=400
    )
    preliminary, _ = build_reference_from_partials(training_ref, bundle.schema, _empty_prediction(bundle))
    result = evaluate_split(
        ray.data.from_pandas(test).repartition(4),
        {"forest": bundle},
        target="y",
        interval_metric="rmse",
        bootstrap_rounds=50,
        drift_spec=spec_from_reference(preliminary),
        batch_size=500,
    )
    got = result.models["forest"]
    y, pred = test["y"].to_numpy(), _scores(bundle, test)
    np.testing.assert_allclose(got.metrics["rmse"], np.sqrt(skm.mean_squared_error(y, pred)), rtol=RTOL)
    np.testing.assert_allclose(got.metrics["mae"], skm.mean_absolute_error(y, pred), rtol=RTOL)
    np.testing.assert_allclose(got.metrics["r2"], skm.r2_score(y, pred), rtol=RTOL)
    assert got.confusion_matrix is None and got.interval is not None and got.interval["rounds"] == 50

    # The reference from the training pass and the held-out predictions equals the in-memory one.
    assert got.prediction is not None
    reference, sample = build_reference_from_partials(training_ref, bundle.schema, got.prediction)
    expected, _ = build_reference(train, bundle.schema, pred)
    assert reference["rows"] == expected["rows"] == 1500 and len(sample) == 1500
    for name in ("x0", "x1"):
        for key in ("bin_edges", "bin_fractions", "mean", "std", "min", "max"):
            np.testing.assert_allclose(
                reference["features"][name][key], expected["features"][name][key], rtol=RTOL
            )
    assert reference["features"]["c"]["frequencies"] == pytest.approx(
        expected["features"]["c"]["frequencies"]
    )
    for key in ("bin_edges", "bin_fractions", "mean", "std", "rows"):
        np.testing.assert_allclose(reference["prediction"][key], expected["prediction"][key], rtol=RTOL)
    assert sorted(reference["prediction"]["sample"]) == sorted(expected["prediction"]["sample"])

    # Past the sample cap, a second pass makes the bin fractions exact for the sampled edges.
    train_ds = ray.data.from_pandas(train).repartition(3)
    capped = reference_partial(train_ds, bundle.schema, cap=300)
    approx, _ = build_reference_from_partials(capped, bundle.schema, got.prediction)
    assert approx["quantiles_exact"] is False
    counts = exact_bin_counts(train_ds, approx)
    exact, _ = build_reference_from_partials(
        capped, bundle.schema, got.prediction, bin_counts_by_feature=counts
    )
    for name in ("x0", "x1"):
        edges = exact["features"][name]["bin_edges"]
        assert edges == approx["features"][name]["bin_edges"]
        full = bin_counts(numeric_values(train[name]), edges)
        np.testing.assert_allclose(exact["features"][name]["bin_fractions"], full / full.sum(), rtol=RTOL)

    # The split-drift counts came from the same pass: monitor's finalize reads them.
    assert result.drift_stats is not None and result.drift_stats["rows"] == 2500
    drift = finalize(result.drift_stats, reference, sample, Thresholds())
    assert drift["drifted_features"] == []


def _empty_prediction(bundle: ModelBundle) -> Any:
    from raymlops.evaluate.reference import PredictionPartial

    return PredictionPartial.from_batch(np.zeros(1), bundle.schema.task, 0, np.zeros(1, dtype=np.uint64))


def test_the_champion_is_rescored_from_the_store_and_one_that_cannot_score_says_why(
    classifiers: dict[str, ModelBundle], tmp_path: Path
) -> None:
    folder = tmp_path / "v"
    classifiers["forest"].save(folder)
    store = ModelStore(str(tmp_path / "store"))
    version = store.register("toy", folder, {"kind": "random_forest", "task": "classification"})
    needs_extra = _with_extra_feature(toy_frame(600, seed=2).assign(extra=1.0))
    test = toy_frame(900, seed=6)
    result = evaluate_split(
        ray.data.from_pandas(test).repartition(3),
        {
            "candidate": classifiers["forest"],
            "champion": BundleRef(f"toy:{version.version}", store.uri),
            "old": needs_extra,
        },
        target="y",
        interval_metric="roc_auc",
        bootstrap_rounds=30,
    )
    candidate, champion = result.models["candidate"], result.models["champion"]
    # The registered version scores exactly like the bundle it was saved from.
    np.testing.assert_allclose(list(champion.metrics.values()), list(candidate.metrics.values()), rtol=1e-6)
    assert champion.champion_record(version.version)["metrics"] == champion.metrics
    old = result.models["old"]
    assert old.error is not None and "extra" in old.error and old.metrics == {}
    record = old.champion_record(3)
    assert record["metrics"] == {} and "champion cannot score these rows" in record["note"]


def _with_extra_feature(frame: pd.DataFrame) -> ModelBundle:
    """A forest that needs a column ``extra`` the held-out rows lack."""
    from sklearn.ensemble import RandomForestClassifier

    from raymlops.config import PreprocessStep
    from raymlops.data.preprocess import FeaturePipeline
    from raymlops.data.schema import TableSchema

    schema = TableSchema(
        target="y",
        task="classification",
        features=["x0", "extra"],
        categorical=[],
        column_types={"x0": "float", "extra": "float", "y": "int"},
        classes=[0, 1],
    )
    features = FeaturePipeline([PreprocessStep.model_validate({"standard_scaler": {"columns": "numeric"}})])
    features.fit(frame, schema)
    est = RandomForestClassifier(n_estimators=5, random_state=0).fit(features.transform(frame), frame["y"])
    return ModelBundle.from_estimator("random_forest", est, features.to_plan(), schema)


def test_targets_are_encoded_by_label_or_its_text_and_unknown_labels_are_left_out(
    classifiers: dict[str, ModelBundle],
) -> None:
    schema = classifiers["forest"].schema
    y, known = encode_target(pd.Series([1, "0", None, 7, 0.0], dtype=object), schema)
    assert y.tolist() == [1, 0, 0] and known.tolist() == [True, True, False, False, True]


def test_a_split_without_the_sensitive_column_is_refused_by_name(classifiers: dict[str, ModelBundle]) -> None:
    ds = ray.data.from_pandas(toy_frame(50, seed=9))
    with pytest.raises(DataError, match="'gender'"):
        evaluate_split(ds, classifiers, target="y", group_column="gender")
