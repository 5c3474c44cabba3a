"""Keras 3 on Ray Train and Tune: real data parallelism, fault tolerance, ASHA and resume.

The Ray tests share the session's embedded Ray (4 logical CPUs on 2 cores) and keep data small
(sklearn digits, a few epochs): their cost is Ray Train start-up, not training.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from raymlops.config import ModelConfig, TuneConfig
from raymlops.evaluate.metrics import compute_metrics
from raymlops.model.keras import KerasParams, keras_scores
from raymlops.train.base import TrainingData


@dataclass
class Split:
    """Training data as trainers get it, plus the arrays the tests check predictions against."""

    data: TrainingData
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


@pytest.fixture(scope="module")
def digits_data(ray_session: Any) -> Split:
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_tr, X_val, y_tr, y_val = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    names = [f"p{i}" for i in range(64)]
    data = TrainingData.from_arrays(X_tr, y_tr, X_val, y_val, "classification", list(range(10)), names)
    return Split(data, X_tr, y_tr, X_val, y_val)


@pytest.fixture(scope="module")
def regression_data(ray_session: Any) -> Split:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 6)).astype(np.float32)
    # A large offset and scale: the network must learn through the target standardization.
    y = 500.0 + 80.0 * X[:, 0] - 40.0 * X[:, 1] + 20.0 * X[:, 2] * X[:, 3] + rng.normal(scale=5.0, size=600)
    names = [f"x{i}" for i in range(6)]
    data = TrainingData.from_arrays(X[:480], y[:480], X[480:], y[480:], "regression", None, names)
    return Split(data, X[:480], y[:480], X[480:], y[480:])


def _spec(task: str = "classification", **over: Any) -> dict[str, Any]:
    spec = {
        "hidden": [16, 8],
        "activation": "relu",
        "dropout": 0.1,
        "seed": 0,
        "n_features": 5,
        "task": task,
        "n_classes": 3 if task == "classification" else 0,
        "y_mean": 100.0,
        "y_std": 10.0,
    }
    spec.update(over)
    return spec


# --- no Ray ------------------------------------------------------------------------------------


def test_keras_model_saves_natively_and_loads_in_safe_mode(tmp_path: Path) -> None:
    import keras

    from raymlops.model import TableSchema
    from raymlops.model.keras import KIND
    from raymlops.train._keras_worker import build_model

    X = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    for task in ("classification", "regression"):
        model = build_model(_spec(task))
        schema = TableSchema("y", task, [], [], {})  # type: ignore[arg-type]
        (tmp_path / task).mkdir()
        assert KIND.save(model, tmp_path / task, schema=schema).files == ["model.keras"]
        loaded = KIND.load(tmp_path / task, {}, schema=schema).model  # safe_mode stays on
        assert isinstance(loaded, keras.Model)
        before, after = keras_scores(model, X), keras_scores(loaded, X)
        np.testing.assert_allclose(before, after, rtol=1e-6, atol=1e-6)
        if task == "classification":
            assert after.shape == (7, 3)
            np.testing.assert_allclose(after.sum(axis=1), 1.0, atol=1e-9)
        else:
            assert after.shape == (7,)
    with pytest.raises(ValueError):  # safe mode really is on: a lambda layer is refused
        lam = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda t: t * 2)])
        lam.save(tmp_path / "lam.keras")
        keras.saving.load_model(tmp_path / "lam.keras")


def test_keras_scores_is_fast_for_one_row() -> None:
    from raymlops.train._keras_worker import build_model

    model = build_model(_spec())
    row = np.zeros((1, 5), np.float32)
    keras_scores(model, row)  # trace once
    start = time.perf_counter()
    for _ in range(50):
        keras_scores(model, row)
    per_call = (time.perf_counter() - start) / 50
    assert per_call < 0.02, f"{per_call * 1000:.1f} ms per one-row call (model.predict costs ~140 ms)"


def test_checkpoint_restores_weights_optimizer_state_and_epoch(tmp_path: Path) -> None:
    import tensorflow as tf

    from raymlops.train._keras_worker import (
        _make_optimizer,
        _restore_checkpoint,
        _save_checkpoint,
        build_model,
        load_model_from_checkpoint_dir,
        weights_digest,
    )

    model = build_model(_spec())
    opt = _make_optimizer(0.01)
    opt.build(model.trainable_variables)
    x = tf.constant(np.random.default_rng(0).normal(size=(8, 5)), tf.float32)
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True))
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    _save_checkpoint(tmp_path, model, opt, {"epoch": 3, "spec": _spec(), "metrics": {}})

    fresh = build_model(_spec(seed=5))
    fresh_opt = _make_optimizer(0.01)
    fresh_opt.build(fresh.trainable_variables)
    state = _restore_checkpoint(tmp_path, fresh, fresh_opt)
    assert state["epoch"] == 3
    assert weights_digest(fresh) == weights_digest(model)
    assert int(fresh_opt.iterations.numpy()) == 3
    for a, b in zip(opt.variables, fresh_opt.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert weights_digest(load_model_from_checkpoint_dir(tmp_path)) == weights_digest(model)


def test_resource_plan_fits_trials_times_workers_into_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    from raymlops.train import _trial as k
    from raymlops.train.keras import plan_keras_resources

    def cluster(cpus: float, gpus: float = 0.0) -> None:
        monkeypatch.setattr(k, "cluster_total", lambda r: {"CPU": cpus, "GPU": gpus}.get(r, 0.0))
        monkeypatch.setattr(k, "trial_concurrency", _concurrency(cpus))

    def _concurrency(total: float) -> Any:
        def fit(tune_cfg: TuneConfig, per_trial: float, reserve_cpus: float = 0.5) -> int:
            n = max(1, int((total - reserve_cpus) // per_trial))
            return min(n, tune_cfg.max_concurrent_trials or n, tune_cfg.num_samples)

        return fit

    # 2 cores (a laptop): 2 workers get fractional CPUs and leave room for Ray Data.
    cluster(2)
    plan = plan_keras_resources(2, "auto", TuneConfig(num_samples=4))
    assert plan.cpus_per_worker < 1 and not plan.use_gpu
    assert plan.max_concurrent * (plan.trial_cpus + 2 * plan.cpus_per_worker) <= 2 - k.RESERVE_CPUS + 1e-9
    # 4 logical CPUs: one 2-worker trial at a time, whole CPUs.
    cluster(4)
    plan = plan_keras_resources(2, "auto", TuneConfig(num_samples=4))
    assert (plan.cpus_per_worker, plan.max_concurrent) == (1.0, 1)
    # 4 logical CPUs, 3 trials of 2 workers (the demo): all three at once on half a CPU per worker,
    # so their worker groups start side by side instead of one after another.
    plan = plan_keras_resources(2, "auto", TuneConfig(num_samples=3))
    assert (plan.cpus_per_worker, plan.max_concurrent) == (0.5, 3)
    assert plan.max_concurrent * (plan.trial_cpus + 2 * plan.cpus_per_worker) <= 4 - k.RESERVE_CPUS
    # 32 CPUs, 4 trials of 2 workers: all four run at once.
    cluster(32)
    plan = plan_keras_resources(2, "auto", TuneConfig(num_samples=4))
    assert plan.max_concurrent == 4 and plan.cpus_per_worker >= 1
    assert plan.max_concurrent * (plan.trial_cpus + 2 * plan.cpus_per_worker) <= 32
    # GPUs: `auto` uses them when there is one per worker, and they bound the concurrency.
    cluster(32, gpus=2)
    plan = plan_keras_resources(2, "auto", TuneConfig(num_samples=4))
    assert plan.use_gpu and plan.gpus_per_worker == 1 and plan.max_concurrent == 1
    cluster(32, gpus=1)
    assert not plan_keras_resources(2, "auto").use_gpu
    # One worker trains inside its trial: the trial itself reserves the worker's CPUs.
    cluster(4)
    plan = plan_keras_resources(1, "auto", TuneConfig(num_samples=4, max_concurrent_trials=2))
    assert plan.trial_cpus == plan.cpus_per_worker == 1.0 and plan.max_concurrent == 2
    assert plan.max_concurrent * plan.trial_cpus <= 4 - k.RESERVE_CPUS
    # ... and caps each trial's Ray Data to what the trials leave (Ray Data sizes itself from the
    # whole cluster: its reads took the last CPUs and the maps behind them never ran).
    assert plan.data_cpus == 1.0
    assert plan_keras_resources(1, "auto").data_cpus == 4 - plan_keras_resources(1, "auto").trial_cpus
    assert plan_keras_resources(2, "auto").data_cpus is None  # Ray Train tells Ray Data itself


# --- one worker: trained in this process, no Ray Train worker group ----------------------------


def test_one_worker_run_trains_in_process_and_resumes_from_its_checkpoint(
    ray_session: Any, digits_data: Split, tmp_path: Path
) -> None:
    import ray

    from raymlops.train.keras import load_keras_checkpoint, train_keras_local

    groups_before = len(ray.util.placement_group_table())
    params = KerasParams(hidden=[64, 32], epochs=2, batch_size=64, learning_rate=0.003)
    first = train_keras_local(params, digits_data.data, storage_path=str(tmp_path), name="one")
    assert first.metrics["epoch"] == 2 and first.metrics["world_size"] == 1
    assert first.metrics["rows"] == len(digits_data.X_train)  # every row once per epoch
    assert first.metrics["steps"] == -(-len(digits_data.X_train) // 64)  # one optimizer step per batch
    assert first.checkpoint_path == str(tmp_path / "one" / "checkpoint_000002")

    more = params.model_copy(update={"epochs": 5})
    resumed = train_keras_local(more, digits_data.data, storage_path=str(tmp_path), name="one")
    assert resumed.metrics["start_epoch"] == 2 and resumed.metrics["epoch"] == 5
    kept = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert kept == ["checkpoint_000004", "checkpoint_000005"]
    assert len(ray.util.placement_group_table()) == groups_before  # no worker group was started
    model = load_keras_checkpoint(str(resumed.checkpoint_path))
    scores = keras_scores(model, digits_data.X_val)
    accuracy = compute_metrics("classification", digits_data.y_val, scores, 10)["accuracy"]
    assert accuracy == pytest.approx(resumed.metrics["accuracy"], abs=1e-9)
    assert accuracy > 0.9


# --- Ray Train: 2 workers, one killed mid-run --------------------------------------------------

EPOCHS = 6
KILL_AFTER_EPOCH = 2


def _kill_rank1_once(trace_dir: Path, killed: dict[str, Any], stop: threading.Event) -> None:
    """Kill training worker rank 1 (a process this test's run started) once it has checkpointed."""
    pid_file = trace_dir / "rank1.pid"
    while not stop.is_set():
        try:
            info = json.loads(pid_file.read_text())
        except (OSError, ValueError):
            info = None
        if info and info["epoch"] >= KILL_AFTER_EPOCH:
            os.kill(info["pid"], signal.SIGKILL)
            killed.update(info)
            return
        time.sleep(0.02)


@pytest.fixture(scope="module")
def killed_run(ray_session: Any, digits_data: Split, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One 2-worker run (max_failures=1) whose rank 1 process is SIGKILLed after epoch 2."""
    from raymlops.train.keras import train_keras_distributed

    root = tmp_path_factory.mktemp("keras_kill")
    trace_dir = root / "trace"
    killed: dict[str, Any] = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_rank1_once, args=(trace_dir, killed, stop), daemon=True)
    killer.start()
    try:
        run = train_keras_distributed(
            KerasParams(hidden=[64, 32], epochs=EPOCHS, batch_size=64, learning_rate=0.003),
            digits_data.data,
            workers=2,
            use_gpu="auto",
            max_failures=1,
            storage_path=str(root / "storage"),
            name="kill_test",
            report_to_tune=False,
            trace_dir=str(trace_dir),
        )
    finally:
        stop.set()
        killer.join(5)
    traces = {
        (r, e): json.loads((trace_dir / f"rank{r}_epoch{e}.json").read_text())
        for r in (0, 1)
        for e in range(1, EPOCHS + 1)
    }
    return run, traces, killed


@pytest.mark.slow
def test_two_workers_train_on_disjoint_shards_and_keep_identical_weights(
    killed_run: Any, digits_data: Split
) -> None:
    run, traces, _ = killed_run
    n_train = len(digits_data.X_train)
    for epoch in range(1, EPOCHS + 1):
        rows0, rows1 = set(traces[0, epoch]["rows"]), set(traces[1, epoch]["rows"])
        assert rows0 and rows1
        assert not rows0 & rows1, f"epoch {epoch}: the workers saw the same rows"
        assert len(rows0) + len(rows1) >= n_train - 1  # streaming_split(equal=True) may drop one row
        # Every rank reports a digest of its own weights after the epoch: bit-identical.
        assert traces[0, epoch]["digest"] == traces[1, epoch]["digest"]
    shards = {frozenset(traces[0, e]["rows"]) for e in range(1, EPOCHS + 1)}
    assert len(shards) > 1, "rank 0 saw the same rows every epoch"
    assert run.metrics["world_size"] == 2
    assert len(set(run.metrics["rank_weight_digests"])) == 1
    assert sum(run.metrics["rank_rows"]) == run.metrics["rows"]
    losses = [traces[0, e]["loss"] for e in range(1, EPOCHS + 1)]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_killed_worker_run_resumes_from_its_last_checkpoint(killed_run: Any, digits_data: Split) -> None:
    from raymlops.train.keras import load_keras_checkpoint

    run, traces, killed = killed_run
    assert killed, "rank 1 was never killed"
    assert run.metrics["epoch"] == EPOCHS
    # Resumed from the last checkpoint the Train controller had registered when the worker died
    # (it collects reports asynchronously, so that may be one epoch before the kill), never epoch 0.
    resumed_from = run.metrics["start_epoch"]
    assert KILL_AFTER_EPOCH - 1 <= resumed_from <= killed["epoch"] + 1
    assert 0 < resumed_from < EPOCHS
    assert traces[1, EPOCHS]["pid"] != killed["pid"]
    assert traces[1, resumed_from]["pid"] == killed["pid"]
    assert all(
        traces[r, e]["start_epoch"] == resumed_from
        for r in (0, 1)
        for e in range(resumed_from + 1, EPOCHS + 1)
    )
    model = load_keras_checkpoint(run.checkpoint_path)
    scores = keras_scores(model, digits_data.X_val)
    assert compute_metrics("classification", digits_data.y_val, scores, 10)["accuracy"] > 0.9


# --- Ray Tune ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_asha_stops_the_weak_keras_trial_and_the_best_model_is_the_candidate(
    ray_session: Any, digits_data: Split, tmp_path: Path
) -> None:
    import ray

    from raymlops.train.keras import train as tune_keras

    model_cfg = ModelConfig(
        name="mlp",
        kind="keras",
        workers=2,
        params={"hidden": [64, 32], "epochs": 4, "batch_size": 64},
        search={"learning_rate": {"choice": [0.01, 0.00001]}},
    )
    # One trial at a time: the second reaches each rung after the first, so ASHA can compare them.
    tune_cfg = TuneConfig(
        num_samples=2, scheduler="asha", reduction_factor=2, seed=1, max_concurrent_trials=1
    )
    trained = tune_keras(model_cfg, tune_cfg, digits_data.data, storage_path=str(tmp_path), experiment="asha")

    assert trained.kind == "keras" and trained.workers == 2
    assert trained.best_params["learning_rate"] == 0.01
    by_lr = {t["params"]["learning_rate"]: t for t in trained.trials}
    assert set(by_lr) == {0.01, 0.00001}
    assert by_lr[0.01]["iterations"] == 4  # reported every epoch
    assert by_lr[0.00001]["iterations"] < 4  # stopped early by ASHA
    assert trained.extra["trials_stopped_early"] == 1
    assert trained.extra["max_concurrent_trials"] * 2 * trained.extra["cpus_per_worker"] <= 4
    scores = keras_scores(trained.estimator, digits_data.X_val)
    val = compute_metrics("classification", digits_data.y_val, scores, 10)["accuracy"]
    assert val == pytest.approx(trained.val_metric, abs=1e-9)  # the candidate is the reported model
    # Stopped trials released their workers' CPUs (no leaked placement groups).
    live = [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]
    assert not [pg for pg in live if any(b.get("CPU", 0) >= 1 for b in pg["bundles"].values())], live


def _trial_results(exp_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for path in exp_dir.glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.parent.name] = lines
    return out


def _interrupt_when_one_trial_is_done(exp_dir: Path, stop: threading.Event, fired: threading.Event) -> None:
    """Send Tune's interrupt signal (SIGUSR1, as Ctrl+C does) once one trial finished and one is midway."""
    while not stop.is_set():
        results = _trial_results(exp_dir)
        done = [n for n, lines in results.items() if lines and lines[-1].get("done")]
        midway = [n for n, lines in results.items() if lines and not lines[-1].get("done")]
        if done and midway:
            fired.set()
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        time.sleep(0.1)


# A one-worker trial trains in its own actor at tens of epochs per second on these 480 rows: the
# long trial needs enough epochs to still be midway when the test interrupts the search.
LONG_EPOCHS = 200


@pytest.mark.slow
def test_interrupted_keras_search_resumes_without_rerunning_finished_trials(
    ray_session: Any, regression_data: Split, tmp_path: Path
) -> None:
    from raymlops.train.keras import train as tune_keras

    model_cfg = ModelConfig(
        name="reg",
        kind="keras",
        workers=1,
        params={"hidden": [32], "batch_size": 32, "learning_rate": 0.01},
        search={"epochs": {"choice": [2, LONG_EPOCHS]}},
    )
    tune_cfg = TuneConfig(num_samples=2, scheduler="fifo", seed=1, max_concurrent_trials=1)
    exp_dir = tmp_path / "reg_search"
    stop, fired = threading.Event(), threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)  # a late signal must not kill pytest
    watcher = threading.Thread(
        target=_interrupt_when_one_trial_is_done, args=(exp_dir, stop, fired), daemon=True
    )
    watcher.start()
    try:
        first = tune_keras(
            model_cfg, tune_cfg, regression_data.data, storage_path=str(tmp_path), experiment="reg_search"
        )
    finally:
        stop.set()
        watcher.join(5)
        signal.signal(signal.SIGUSR1, previous)
    assert fired.is_set()
    before = _trial_results(exp_dir)
    finished = {n: lines for n, lines in before.items() if lines[-1].get("done")}
    assert len(finished) == 1 and len(before) == 2
    assert first.trials  # the interrupted search still returns its best finished trial

    resumed = tune_keras(
        model_cfg,
        tune_cfg,
        regression_data.data,
        storage_path=str(tmp_path),
        experiment="reg_search",
        resume=True,
    )
    after = _trial_results(exp_dir)
    for name, lines in finished.items():
        assert after[name] == lines, "a finished trial ran again"
    (long_name,) = set(after) - set(finished)
    last = after[long_name][-1]
    assert last["done"] and last["epoch"] == LONG_EPOCHS
    assert last["start_epoch"] > 0  # its Train run resumed from its checkpoint, not from epoch 0
    assert {t["params"]["epochs"] for t in resumed.trials} == {2, LONG_EPOCHS}
    preds = keras_scores(resumed.estimator, regression_data.X_val)
    assert preds.shape == (len(regression_data.X_val),)
    rmse = compute_metrics("regression", regression_data.y_val, preds)["rmse"]
    assert rmse == pytest.approx(resumed.val_metric, rel=1e-6)
    assert rmse < 0.5 * float(np.std(regression_data.y_val))  # learned through the target scaling
