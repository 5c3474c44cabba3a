import numpy as np
import pytest
from sklearn.datasets import load_digits

from raymlops.config import ModelConfig, TuneConfig
from raymlops.model.random_forest import ForestParams
from raymlops.train.base import TrainingData
from raymlops.train.random_forest import fit_forest, forest_estimator
from raymlops.train.random_forest import train as tune_forest


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


def test_merged_forest_has_requested_size_and_is_identical_for_1_and_2_workers(ray_session, digits):
    X, y = digits
    params = ForestParams(n_estimators=30, random_state=11)
    one = fit_forest(X, y, "classification", params, workers=1, n_classes=10)
    two = fit_forest(X, y, "classification", params, workers=2, n_classes=10)
    three = fit_forest(X, y, "classification", params, workers=3, n_classes=10)
    assert len(one.estimators_) == len(two.estimators_) == len(three.estimators_) == 30
    assert np.array_equal(one.predict_proba(X), two.predict_proba(X))
    assert np.array_equal(one.predict_proba(X), three.predict_proba(X))
    # ... and it is the forest scikit-learn itself grows for that seed.
    sk = forest_estimator("classification", params).fit(X, y)
    assert np.array_equal(sk.predict_proba(X), two.predict_proba(X))
    assert np.allclose(two.feature_importances_, sk.feature_importances_)


def test_regression_forest_with_row_subsampling_matches_sklearn(ray_session):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5)).astype(np.float32)
    y = (X[:, 0] * 3 + rng.normal(size=400)).astype(np.float32)
    params = ForestParams(n_estimators=12, max_samples=0.5, random_state=2)
    ours = fit_forest(X, y, "regression", params, workers=2)
    sk = forest_estimator("regression", params).fit(X, y)
    assert np.allclose(ours.predict(X), sk.predict(X))


def _data(digits) -> TrainingData:
    X, y = digits
    return TrainingData.from_arrays(
        X[:1200], y[:1200], X[1200:], y[1200:], "classification", list(range(10)), []
    )


def test_asha_stops_weak_forest_trials_early(ray_session, digits, tmp_path):
    model = ModelConfig(
        name="rf",
        kind="random_forest",
        params={"n_estimators": 50},
        search={"max_depth": {"choice": [1, 2, 12, None]}},
    )
    built = {}
    for scheduler in ("fifo", "asha"):
        # One trial at a time: which trial reaches a rung first then follows the seeded sample order,
        # not the machine's load (three at once under CI load once let every weak trial in first).
        tune_cfg = TuneConfig(
            num_samples=8, scheduler=scheduler, seed=3, reduction_factor=2, max_concurrent_trials=1
        )
        trained = tune_forest(
            model, tune_cfg, _data(digits), storage_path=str(tmp_path), experiment=scheduler
        )
        built[scheduler] = trained.extra["trees_built_in_search"]
        assert trained.best_params["max_depth"] in (12, None)
        assert len(trained.estimator.estimators_) == 50
    assert built["fifo"] == 8 * 50
    assert built["asha"] < built["fifo"]


def test_sampled_forest_bounds_each_tree_and_ignores_the_worker_count(ray_session) -> None:
    """Large data: each tree reads its own seeded sample from the Dataset; same seed, same forest."""
    import numpy as np

    from raymlops.model.random_forest import ForestParams
    from raymlops.train.base import dataset_from_arrays
    from raymlops.train.random_forest import fit_forest_sampled

    rng = np.random.default_rng(0)
    X = rng.normal(size=(6000, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    ds = dataset_from_arrays(X, y)
    params = ForestParams(n_estimators=6, max_depth=6, random_state=3)
    import raymlops.train.random_forest as rf

    old, rf.TREE_ROWS = rf.TREE_ROWS, 1000
    try:
        one = fit_forest_sampled([ds], len(X), "classification", params, workers=1, n_classes=2)
        three = fit_forest_sampled([ds], len(X), "classification", params, workers=3, n_classes=2)
    finally:
        rf.TREE_ROWS = old
    np.testing.assert_array_equal(one.predict_proba(X), three.predict_proba(X))
    for tree in one.estimators_:
        assert tree.tree_.n_node_samples[0] <= 1300  # ~1000 rows each, not 6000
    assert (one.predict(X) == y).mean() > 0.9
