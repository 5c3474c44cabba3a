"""The compiled forest scores large batches only where it predicts what scikit-learn predicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesRegressor, RandomForestClassifier, RandomForestRegressor

from raymlops.model import TableSchema
from raymlops.model._forest_kernel import compile_estimator
from raymlops.model.random_forest import COMPILED_ENV, FAST_PATH_FILE, KIND

pytest.importorskip("numba")


def _data(n: int, seed: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 12)).astype(np.float32)
    score = X[:, 0] + 0.5 * X[:, 1] * X[:, 2] + rng.normal(scale=0.5, size=n)
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
    return X, y


def _schema(task: str, classes: int) -> TableSchema:
    feats = [f"f{i}" for i in range(12)]
    return TableSchema(
        target="y",
        task=task,  # type: ignore[arg-type]
        features=feats,
        categorical=[],
        column_types={**dict.fromkeys(feats, "float"), "y": "int" if task == "classification" else "float"},  # type: ignore[dict-item]
        classes=list(range(classes)) if task == "classification" else None,
    )


@pytest.mark.parametrize("depth", [3, 12, None])
def test_held_out_probabilities_and_labels_equal_scikit_learns(depth: int | None) -> None:
    X, y = _data(6000, seed=1)
    held_out, _ = _data(20_003, seed=2)  # chunks of rows, and a tail that is no whole lane
    forest = RandomForestClassifier(n_estimators=40, max_depth=depth, random_state=0).fit(X, y)
    expected = forest.predict_proba(held_out)
    got = compile_estimator(forest).scores(held_out)
    assert np.abs(got - expected).max() <= 1e-5
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    # Inputs exactly on a split threshold go the way scikit-learn sends them (float64 thresholds).
    edge = np.repeat(held_out[:64], 1, axis=0)
    tree = forest.estimators_[0].tree_
    edge[:, tree.feature[0]] = np.float32(tree.threshold[0])
    assert np.abs(compile_estimator(forest).scores(edge) - forest.predict_proba(edge)).max() <= 1e-5


@pytest.mark.parametrize("cls", [RandomForestRegressor, ExtraTreesRegressor])
def test_regression_forests_give_scikit_learns_values(cls: type) -> None:
    X, y = _data(4000, seed=3)
    target = X[:, 0] * 3 + y
    forest = cls(n_estimators=20, max_depth=10, random_state=0).fit(X, target)
    held_out, _ = _data(9000, seed=4)
    np.testing.assert_allclose(
        compile_estimator(forest).scores(held_out), forest.predict(held_out), rtol=1e-9
    )


def test_the_version_records_the_check_and_large_batches_use_it(tmp_path: Path, monkeypatch) -> None:
    X, y = _data(5000, seed=5)
    held_out, _ = _data(3000, seed=6)
    forest = RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0).fit(X, y)
    schema = _schema("classification", 3)
    KIND.save(forest, tmp_path, schema=schema, check_X=held_out)
    report = json.loads((tmp_path / FAST_PATH_FILE).read_text())
    assert report["compiled"]["ok"] is True and report["compiled"]["checked_rows"] == 3000
    assert report["compiled"]["max_abs_diff"] <= 1e-5 and report["compiled"]["same_labels"] is True

    predictor = KIND.load(tmp_path, {"kind": "random_forest"}, schema=schema)
    assert predictor.compiled is not None
    batch, _ = _data(10_000, seed=7)
    assert np.abs(predictor.scores(batch) - forest.predict_proba(batch)).max() <= 1e-5

    monkeypatch.setenv(COMPILED_ENV, "0")
    assert KIND.load(tmp_path, {"kind": "random_forest"}, schema=schema).compiled is None


def test_a_version_whose_check_failed_scores_through_scikit_learn(tmp_path: Path) -> None:
    X, y = _data(3000, seed=8)
    forest = RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0).fit(X, y)
    schema = _schema("classification", 3)
    KIND.save(forest, tmp_path, schema=schema, check_X=X[:500])
    report = json.loads((tmp_path / FAST_PATH_FILE).read_text())
    report["compiled"] = {"ok": False, "reason": "compiled predictions differ"}
    (tmp_path / FAST_PATH_FILE).write_text(json.dumps(report))
    assert KIND.load(tmp_path, {"kind": "random_forest"}, schema=schema).compiled is None


def _saved_forest(tmp_path: Path) -> tuple[RandomForestClassifier, TableSchema]:
    X, y = _data(3000, seed=9)
    forest = RandomForestClassifier(n_estimators=15, max_depth=8, random_state=0).fit(X, y)
    schema = _schema("classification", 3)
    KIND.save(forest, tmp_path, schema=schema, check_X=X[:1000])
    return forest, schema


def test_a_loaded_forest_answers_small_batches_before_the_forest_itself_is_read(
    tmp_path: Path, monkeypatch
) -> None:
    """A replica is ready once ONNX is up; the skops forest (large batches) follows in the background."""
    import threading

    from raymlops.model import random_forest

    forest, schema = _saved_forest(tmp_path)
    release = threading.Event()
    real = random_forest._load_forest

    def slow(folder: Path):
        assert release.wait(30)
        return real(folder)

    monkeypatch.setattr(random_forest, "_load_forest", slow)
    predictor = KIND.load(tmp_path, {"kind": "random_forest"}, schema=schema)
    small, _ = _data(10, seed=10)
    assert np.abs(predictor.scores(small) - forest.predict_proba(small)).max() <= 1e-5
    release.set()
    large, _ = _data(5000, seed=11)
    assert np.abs(predictor.scores(large) - forest.predict_proba(large)).max() <= 1e-5
    assert predictor.compiled is not None


def test_a_forest_that_fails_to_load_in_the_background_says_so_on_the_first_large_batch(
    tmp_path: Path, monkeypatch
) -> None:
    from raymlops.model import random_forest

    _, schema = _saved_forest(tmp_path)

    def broken(folder: Path):
        raise OSError(f"cannot read {folder / 'model.skops'}")

    monkeypatch.setattr(random_forest, "_load_forest", broken)
    predictor = KIND.load(tmp_path, {"kind": "random_forest"}, schema=schema)
    small, _ = _data(3, seed=12)
    assert predictor.scores(small).shape == (3, 3)
    large, _ = _data(5000, seed=13)
    with pytest.raises(OSError, match="model.skops"):
        predictor.scores(large)
