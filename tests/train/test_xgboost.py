"""XGBoost on Ray Train and Tune: 2-worker data parallelism, ASHA, the saved booster, the pipeline.

The Ray tests share the session's embedded Ray (4 logical CPUs on 2 cores) and keep data small
(sklearn digits, tens of rounds): their cost is Ray Train start-up (a worker group per trial), so
the FIFO and ASHA searches run once per module and several tests read them.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from raymlops.config import ModelConfig, TuneConfig, load_pipeline, parse_pipeline
from raymlops.errors import ConfigError
from raymlops.evaluate.metrics import compute_metrics
from raymlops.model import ModelBundle, TableSchema
from raymlops.model.xgboost import KIND, XGBOOST_FILE, XGBoostParams, booster_params
from raymlops.train.base import TrainedModel, TrainingData

PIPELINES = Path(__file__).parents[2] / "pipelines"
ROUNDS = 30
STRONG, WEAK = 0.5, 0.005  # learning rates; with seed 1 Tune samples the strong one first


def _schema(task: str, n_features: int, classes: list[Any] | None) -> TableSchema:
    names = [f"f{i}" for i in range(n_features)]
    return TableSchema(
        target="target",
        task=task,  # type: ignore[arg-type]
        features=names,
        categorical=[],
        column_types={n: "float" for n in names},
        classes=classes,
    )


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, ...]:
    X, y = load_digits(return_X_y=True)
    X_tr, X_val, y_tr, y_val = train_test_split(
        X.astype(np.float32), y, test_size=0.25, random_state=0, stratify=y
    )
    return X_tr, X_val, y_tr, y_val


@pytest.fixture(scope="module")
def digits_data(digits: tuple[np.ndarray, ...]) -> TrainingData:
    X_tr, X_val, y_tr, y_val = digits
    return TrainingData.from_arrays(X_tr, y_tr, X_val, y_val, "classification", list(range(10)), [])


# --- no Ray ------------------------------------------------------------------------------------


def test_every_trial_reports_at_the_same_rounds_and_at_most_20_times() -> None:
    from raymlops.train.xgboost import MAX_REPORTS, report_every

    def entry(**over: Any) -> ModelConfig:
        return ModelConfig(name="x", kind="xgboost", **over)

    assert report_every(entry(params={"num_boost_round": 20})) == 1
    assert report_every(entry(params={"num_boost_round": 100})) == 5
    # A searched round count: the interval follows the longest trial, the same for all of them.
    searched = entry(params={"num_boost_round": 50}, search={"num_boost_round": {"choice": [40, 400]}})
    assert report_every(searched) == 400 // MAX_REPORTS


def test_config_errors_name_the_key_and_exact_is_refused_on_two_workers() -> None:
    base = {"name": "p", "data": {"source": "builtin://digits"}}
    with pytest.raises(ConfigError, match="max_depht"):
        parse_pipeline({**base, "models": [{"name": "x", "kind": "xgboost", "params": {"max_depht": 3}}]})
    with pytest.raises(ConfigError, match=r"models\[0\].*tree_method 'exact'.*2 workers"):
        parse_pipeline(
            {
                **base,
                "models": [
                    {"name": "x", "kind": "xgboost", "workers": 2, "params": {"tree_method": "exact"}}
                ],
            }
        )
    one = parse_pipeline(
        {
            **base,
            "models": [{"name": "x", "kind": "xgboost", "workers": 1, "params": {"tree_method": "exact"}}],
        }
    )
    assert one.models[0].params == {"tree_method": "exact"}
    # ... but not on GPU workers, which XGBoost's exact method cannot use: refused before any worker starts.
    from raymlops.train.xgboost import _check_device

    with pytest.raises(ConfigError, match="'exact' does not run on a GPU"):
        _check_device(True, {"hist", "exact"})
    _check_device(False, {"exact"})


def test_booster_params_fit_the_task() -> None:
    p = XGBoostParams(scale_pos_weight=3.0)
    multi = booster_params(p, "classification", 10, gpu=False)
    assert (multi["objective"], multi["num_class"], multi["device"]) == ("multi:softprob", 10, "cpu")
    assert "scale_pos_weight" not in multi  # binary only: XGBoost warns about it elsewhere
    binary = booster_params(p, "classification", 2, gpu=True)
    assert (binary["objective"], binary["scale_pos_weight"], binary["device"]) == (
        "binary:logistic",
        3.0,
        "cuda",
    )
    assert booster_params(p, "regression", 0, gpu=False)["objective"] == "reg:squarederror"


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_saved_booster_is_plain_ubjson_and_loads_to_identical_scores(task: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 6)).astype(np.float32)
    k = {"binary": 2, "multiclass": 4, "regression": 0}[task]
    y = (X[:, 0] * 3 + X[:, 1]) if task == "regression" else np.digitize(X[:, 0] + X[:, 1], [-1, 0, 1]) % k
    kind = "regression" if task == "regression" else "classification"
    params = booster_params(XGBoostParams(max_depth=3), kind, k, gpu=False)
    booster = xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=20)
    schema = _schema(kind, 6, list(range(k)) if k else None)

    saved = KIND.save(booster, tmp_path, schema=schema)
    assert saved.files == [XGBOOST_FILE]
    assert (tmp_path / XGBOOST_FILE).read_bytes()[:1] == b"{"  # UBJSON object, not a pickle
    loaded = KIND.load(tmp_path, {}, schema=schema)
    fresh = KIND.wrap(booster, schema)
    big, small = loaded.scores(X), np.concatenate([loaded.scores(X[i : i + 1]) for i in range(50)])
    np.testing.assert_array_equal(big, fresh.scores(X))
    np.testing.assert_allclose(small, big[:50], rtol=1e-6, atol=1e-7)  # 1-thread path == threaded path
    if kind == "classification":
        assert big.shape == (3000, k)
        np.testing.assert_allclose(big.sum(axis=1), 1.0, atol=1e-6)
    else:
        assert big.shape == (3000,)
        np.testing.assert_allclose(big, booster.predict(xgb.DMatrix(X)), rtol=1e-6)


# --- Ray Train + Tune ----------------------------------------------------------------------------


def _search(data: TrainingData, scheduler: str, storage: Path) -> tuple[TrainedModel, float]:
    from raymlops.train.xgboost import train

    model_cfg = ModelConfig(
        name="xgb",
        kind="xgboost",
        workers=2,
        params={"num_boost_round": ROUNDS, "max_depth": 4},
        search={"learning_rate": {"choice": [STRONG, WEAK]}},
    )
    # One trial at a time: the second reaches each rung after the first, so ASHA can compare them.
    tune_cfg = TuneConfig(
        num_samples=2, scheduler=scheduler, seed=1, reduction_factor=2, max_concurrent_trials=1
    )
    started = time.perf_counter()
    trained = train(model_cfg, tune_cfg, data, storage_path=str(storage), experiment=scheduler)
    return trained, time.perf_counter() - started


@pytest.fixture(scope="module")
def searches(
    ray_session: Any, digits_data: TrainingData, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[TrainedModel, float]]:
    root = tmp_path_factory.mktemp("xgb_search")
    return {s: _search(digits_data, s, root) for s in ("fifo", "asha")}


@pytest.mark.slow
def test_two_worker_search_reports_every_round_and_returns_the_best_final_booster(
    searches: dict[str, tuple[TrainedModel, float]], digits: tuple[np.ndarray, ...], tmp_path: Path
) -> None:
    trained, _ = searches["fifo"]
    _, X_val, _, y_val = digits
    assert trained.kind == "xgboost" and trained.workers == 2
    assert trained.best_params["learning_rate"] == STRONG
    by_lr = {t["params"]["learning_rate"]: t for t in trained.trials}
    assert set(by_lr) == {STRONG, WEAK}
    assert trained.extra["report_every"] == 2
    assert by_lr[STRONG]["iterations"] == by_lr[WEAK]["iterations"] == ROUNDS // 2  # one Tune step per report
    assert trained.extra["rounds_in_search"] == 2 * ROUNDS
    assert trained.extra["use_gpu"] is False
    assert trained.extra["max_concurrent_trials"] * 2 * trained.extra["cpus_per_worker"] <= 4

    booster = trained.estimator
    assert isinstance(booster, xgb.Booster) and booster.num_boosted_rounds() == ROUNDS
    schema = _schema("classification", 64, list(range(10)))
    reported = compute_metrics("classification", y_val, KIND.wrap(booster, schema).scores(X_val), 10)
    assert reported["accuracy"] == pytest.approx(trained.val_metric, abs=1e-12)  # the reported model
    assert trained.val_metric >= 0.93
    # What the model kind saves loads back to the same predictions.
    KIND.save(booster, tmp_path, schema=schema)
    loaded = KIND.load(tmp_path, {}, schema=schema)
    np.testing.assert_array_equal(loaded.scores(X_val), KIND.wrap(booster, schema).scores(X_val))


@pytest.mark.slow
def test_asha_stops_the_weak_trial_and_boosts_fewer_rounds_than_fifo(
    searches: dict[str, tuple[TrainedModel, float]],
) -> None:
    import ray

    fifo, fifo_s = searches["fifo"]
    asha, asha_s = searches["asha"]
    by_lr = {t["params"]["learning_rate"]: t for t in asha.trials}
    assert by_lr[STRONG]["iterations"] == ROUNDS // 2
    assert by_lr[WEAK]["iterations"] < ROUNDS // 2  # stopped early by ASHA
    assert asha.extra["trials_stopped_early"] == 1 and fifo.extra["trials_stopped_early"] == 0
    assert asha.extra["rounds_in_search"] < fifo.extra["rounds_in_search"] == 2 * ROUNDS
    assert asha.best_params["learning_rate"] == STRONG
    # Stopped trials ended their Train runs and released the workers' CPUs.
    live = [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]
    assert not [pg for pg in live if any(b.get("CPU", 0) >= 1 for b in pg["bundles"].values())], live
    print(f"fifo search {fifo_s:.1f} s, asha search {asha_s:.1f} s")


@pytest.mark.slow
def test_one_worker_trials_boost_in_their_own_actor_as_plain_xgboost_would(
    ray_session: Any, digits_data: TrainingData, digits: tuple[np.ndarray, ...], tmp_path: Path
) -> None:
    import ray

    from raymlops.train.xgboost import train

    X_tr, X_val, y_tr, y_val = digits
    model_cfg = ModelConfig(
        name="xgb1",
        kind="xgboost",
        workers=1,
        params={"num_boost_round": ROUNDS, "max_depth": 4},
        search={"learning_rate": {"choice": [STRONG, WEAK]}},
    )
    tune_cfg = TuneConfig(
        num_samples=2, scheduler="asha", seed=1, reduction_factor=2, max_concurrent_trials=1
    )
    groups_before = len(ray.util.placement_group_table())
    ctrl_c = signal.getsignal(signal.SIGINT)
    trained = train(model_cfg, tune_cfg, digits_data, storage_path=str(tmp_path), experiment="local")

    # Tune's own Ctrl-C handler is gone once the search ends: the program's next Ctrl-C is its own.
    assert signal.getsignal(signal.SIGINT) is ctrl_c

    # One placement group per Tune trial and none for a Ray Train worker group.
    assert len(ray.util.placement_group_table()) - groups_before <= len(trained.trials) == 2
    by_lr = {t["params"]["learning_rate"]: t for t in trained.trials}
    assert by_lr[STRONG]["iterations"] == ROUNDS // 2  # a report every 2 rounds, as on 2 workers
    assert by_lr[WEAK]["iterations"] < ROUNDS // 2 and trained.extra["trials_stopped_early"] == 1
    assert trained.best_params["learning_rate"] == STRONG
    # Each report in result.json carries when it was made to the millisecond, not Tune's whole seconds.
    stamps = [
        json.loads(line)["timestamp"]
        for path in (tmp_path / "local").glob("*/result.json")
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    assert len(stamps) >= 2 and any(stamp != int(stamp) for stamp in stamps)
    # Boosted a few rounds per Tune step, resumed on one booster: the same trees as one xgb.train.
    booster = trained.estimator
    assert booster.num_boosted_rounds() == ROUNDS
    params = booster_params(XGBoostParams(max_depth=4, learning_rate=STRONG), "classification", 10, gpu=False)
    plain = xgb.train(params, xgb.QuantileDMatrix(X_tr, label=y_tr), num_boost_round=ROUNDS)
    np.testing.assert_allclose(
        booster.predict(xgb.DMatrix(X_val)), plain.predict(xgb.DMatrix(X_val)), atol=1e-5
    )
    schema = _schema("classification", 64, list(range(10)))
    reported = compute_metrics("classification", y_val, KIND.wrap(booster, schema).scores(X_val), 10)
    assert reported["accuracy"] == pytest.approx(trained.val_metric, abs=1e-12)


def test_a_restarted_one_worker_trial_resumes_from_its_last_checkpoint(
    ray_session: Any, digits_data: TrainingData, digits: tuple[np.ndarray, ...], tmp_path: Path
) -> None:
    from ray import tune

    from raymlops.train._trial import plan_resources
    from raymlops.train.xgboost import _LocalXGBoostTrial, load_booster_checkpoint

    X_tr, X_val, y_tr, _ = digits
    model_cfg = ModelConfig(name="xgb1", kind="xgboost", params={"num_boost_round": 10, "max_depth": 3})
    plan = plan_resources(1, False, in_trial=True)
    trial = tune.with_parameters(
        _LocalXGBoostTrial,
        data=digits_data,
        model_cfg=model_cfg,
        plan=vars(plan),
        every=2,
        train_storage=str(tmp_path),
    )
    first = trial(config={})
    reports = [first.train() for _ in range(3)]
    first.stop()  # the actor is gone (an interruption): only the run's checkpoints are left
    assert [r["rounds"] for r in reports] == [2, 4, 6] and not reports[-1]["done"]

    again = trial(config={})
    rest = [again.train() for _ in range(2)]
    again.stop()
    assert [r["rounds"] for r in rest] == [8, 10] and rest[-1]["done"]
    assert rest[-1]["checkpoint_path"].startswith(str(tmp_path / "train_default" / "checkpoint_"))
    booster = load_booster_checkpoint(rest[-1]["checkpoint_path"])
    params = booster_params(XGBoostParams(max_depth=3), "classification", 10, gpu=False)
    plain = xgb.train(params, xgb.QuantileDMatrix(X_tr, label=y_tr), num_boost_round=10)
    np.testing.assert_allclose(
        booster.predict(xgb.DMatrix(X_val)), plain.predict(xgb.DMatrix(X_val)), atol=1e-5
    )


@pytest.mark.slow
def test_regression_on_one_worker_reports_rmse_and_fits_the_target(ray_session: Any, tmp_path: Path) -> None:
    from raymlops.train.xgboost import train

    rng = np.random.default_rng(0)
    X = rng.normal(size=(1500, 5)).astype(np.float32)
    y = 500.0 + 80.0 * X[:, 0] - 40.0 * X[:, 1] + 20.0 * X[:, 2] * X[:, 3] + rng.normal(scale=5.0, size=1500)
    y = y.astype(np.float32)
    data = TrainingData.from_arrays(X[:1200], y[:1200], X[1200:], y[1200:], "regression", None, [])
    model_cfg = ModelConfig(name="reg", kind="xgboost", params={"num_boost_round": 60, "learning_rate": 0.3})
    trained = train(model_cfg, TuneConfig(), data, storage_path=str(tmp_path), experiment="reg")

    assert trained.trials[0]["iterations"] == 20 and trained.extra["rounds"] == 60
    schema = _schema("regression", 5, None)
    pred = KIND.wrap(trained.estimator, schema).scores(X[1200:])
    metrics = compute_metrics("regression", y[1200:], pred, 0)
    assert metrics["rmse"] == pytest.approx(trained.val_metric, rel=1e-9)  # tune.metric defaults to rmse
    assert metrics["r2"] > 0.9, metrics


@pytest.mark.slow
def test_xgboost_pipeline_passes_its_gate_and_its_version_scores(ray_session: Any, tmp_path: Path) -> None:
    from raymlops.pipeline import run_pipeline

    store = str(tmp_path / "store")
    cfg = load_pipeline(PIPELINES / "xgboost.yaml")
    assert cfg.models[0].kind == "xgboost" and cfg.models[0].workers == 2
    summary = run_pipeline(cfg, store=store)
    print(f"pipeline {summary['seconds']} s, held-out accuracy {summary['metrics']['accuracy']:.4f}")

    # digits with its 3 constant pixels left out and the hash split of seed 42: 0.936 measured here,
    # plain single-process XGBoost with the same params on the same rows: 0.939
    assert summary["metrics"]["accuracy"] >= 0.92, summary["metrics"]
    assert summary["gate"]["passed"] and summary["promoted"] == "champion"
    model = summary["models"][0]
    assert model["kind"] == "xgboost" and model["workers"] == 2
    assert model["details"]["rounds"] == 100
    assert len(model["trials"]) == 3 and all(t["error"] is None for t in model["trials"])

    folder = tmp_path / "store" / "models" / cfg.name / str(summary["version"])
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["kind"] == "xgboost" and (folder / XGBOOST_FILE).exists()
    assert not list(folder.glob("*.pkl"))
    frame = load_digits(as_frame=True).frame
    bundle = ModelBundle.load(f"{cfg.name}:{summary['version']}", store)
    scored = bundle.score(frame.drop(columns=["target"]))
    assert scored.n_rejected == 0
    out = scored.to_frame()
    assert (out["prediction"].to_numpy() == frame["target"].to_numpy()).mean() >= 0.95
    one = bundle.score(frame.drop(columns=["target"]).head(1)).to_frame()
    assert one["prediction"].iloc[0] == out["prediction"].iloc[0]
