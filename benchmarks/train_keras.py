"""Keras MLP: plain ``model.fit`` versus raymlops, side by side in one process, and ASHA versus FIFO.

Part 1, throughput. The same MLP (hidden 64-32, Adam, the same global batch) on the same rows
(sklearn digits, tiled with a little noise to ``--rows`` rows) is trained by

* ``model.fit`` in this process (numpy arrays, ``shuffle=True``, Keras defaults);
* raymlops with 1 worker, as a ``workers: 1`` Tune trial runs it: in the calling process, streaming
  the Ray Dataset with ``iter_batches``, scoring the validation split and checkpointing every epoch
  (:func:`raymlops.train.keras.train_keras_local`);
* raymlops with 2 workers on Ray Train (a worker group, one all-reduce per step).

Steady-state samples/s = rows x (epochs - 1) / the time of every epoch after the first (the first
one traces the compiled functions). Each trainer runs ``--repeats`` times, interleaved (fit, ours,
fit, ours, ...) so that a load change on a shared machine hits both; the table shows the median
and the spread (min-max). Wall time is the whole run, start-up included: building the model,
reading the validation rows, tracing, every epoch (and for 2 workers, Ray Train's worker group).
Ratio = median samples/s (or wall) over ``model.fit``'s.

Part 2, time to a target validation accuracy on digits (training rows tiled to ``--tune-rows``):
``--samples`` one-worker trials (same seed, so FIFO and ASHA sample the same configurations),
``--concurrent`` at a time, once with FIFO and once with ASHA, for each of ``--seeds`` seeds (the
first sampled config decides a single seed's race). Time to target = from the start of the search
to the first epoch report of any trial at or above ``--target``; also total wall time and the epochs
trained in all; the median ratio over seeds and its spread.

Run: ``python benchmarks/train_keras.py [--rows 100000] [--epochs 6] [--repeats 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table  # noqa: E402

from raymlops.config import ModelConfig, TuneConfig  # noqa: E402
from raymlops.model.keras import KerasParams  # noqa: E402
from raymlops.train.base import TrainingData  # noqa: E402


@dataclass
class Split:
    data: TrainingData
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray


@dataclass
class Runs:
    """Repeated runs of one trainer: steady-state samples/s, wall seconds and accuracy of each."""

    name: str
    sps: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    wait: list[float] = field(default_factory=list)

    def add(self, epoch_times: list[float], rows: int, wall: float, acc: float, wait: float = 0.0) -> None:
        steady = epoch_times[1:] or epoch_times
        self.sps.append(rows * len(steady) / sum(steady))
        self.wall.append(wall)
        self.acc.append(acc)
        self.wait.append(wait)


def _digits(rows: int, seed: int = 0) -> Split:
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_tr, X_val, y_tr, y_val = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
    if rows > len(X_tr):
        reps = int(np.ceil(rows / len(X_tr)))
        rng = np.random.default_rng(seed)
        X_tr = np.tile(X_tr, (reps, 1))[:rows]
        X_tr = (X_tr + rng.normal(scale=0.02, size=X_tr.shape)).astype(np.float32)
        y_tr = np.tile(y_tr, reps)[:rows]
    names = [f"p{i}" for i in range(X.shape[1])]
    data = TrainingData.from_arrays(X_tr, y_tr, X_val, y_val, "classification", list(range(10)), names)
    return Split(data, X_tr, y_tr, X_val, y_val)


def _plain_fit(params: KerasParams, split: Split, runs: Runs) -> None:
    """``model.fit`` on numpy arrays in this process, then one validation pass."""
    import keras

    from raymlops.model.keras import keras_scores
    from raymlops.train._keras_worker import build_model
    from raymlops.train.keras import model_spec

    epoch_times: list[float] = []

    class _Timer(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            epoch_times.append(time.perf_counter() - self._t)

    start = time.perf_counter()
    model = build_model(model_spec(params, split.data))
    model.compile(
        optimizer=keras.optimizers.Adam(params.learning_rate), loss="sparse_categorical_crossentropy"
    )
    model.fit(
        split.X_train,
        split.y_train,
        batch_size=params.batch_size,
        epochs=params.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[_Timer()],
    )
    acc = float((keras_scores(model, split.X_val).argmax(axis=1) == split.y_val).mean())
    runs.add(epoch_times, len(split.X_train), time.perf_counter() - start, acc)


def _ours_local(params: KerasParams, split: Split, storage: str, runs: Runs) -> None:
    from raymlops.train.keras import train_keras_local

    start = time.perf_counter()
    run = train_keras_local(params, split.data, storage_path=storage, name=f"local_{time.time_ns()}")
    m = run.metrics
    wait = float(m["data_wait_s"]) / max(float(m["epoch_time_s"]), 1e-9)
    runs.add(list(m["epoch_times_s"]), len(split.X_train), time.perf_counter() - start, m["accuracy"], wait)


def _ours_train(params: KerasParams, split: Split, workers: int, storage: str, runs: Runs) -> None:
    from raymlops.train.keras import train_keras_distributed

    start = time.perf_counter()
    run = train_keras_distributed(
        params,
        split.data,
        workers=workers,
        use_gpu=False,
        max_failures=0,
        storage_path=storage,
        name=f"train_{workers}w_{time.time_ns()}",
        report_to_tune=False,
    )
    m = run.metrics
    wait = float(m["data_wait_s"]) / max(float(m["epoch_time_s"]), 1e-9)
    runs.add(list(m["epoch_times_s"]), len(split.X_train), time.perf_counter() - start, m["accuracy"], wait)


def _spread(values: list[float], fmt: str) -> str:
    return f"{format(min(values), fmt)}-{format(max(values), fmt)}" if len(values) > 1 else "-"


def _throughput(args: argparse.Namespace, storage: str) -> None:
    import tensorflow as tf  # imported once, before either trainer is timed

    del tf
    params = KerasParams(hidden=[64, 32], epochs=args.epochs, batch_size=args.batch_size, learning_rate=0.003)
    split = _digits(args.rows)
    fit, one = Runs("keras model.fit, this process"), Runs("raymlops, 1 worker (in-trial)")
    for _ in range(args.repeats):
        _plain_fit(params, split, fit)
        _ours_local(params, split, storage, one)
    results = [fit, one]
    if args.workers2_repeats:
        two = Runs("raymlops, 2 workers (Ray Train)")
        for _ in range(args.workers2_repeats):
            _ours_train(params, split, 2, storage, two)
        results.append(two)
    base_sps, base_wall = statistics.median(fit.sps), statistics.median(fit.wall)
    rows = []
    for r in results:
        sps, wall = statistics.median(r.sps), statistics.median(r.wall)
        rows.append(
            (
                r.name,
                f"{sps:,.0f}",
                _spread(r.sps, ",.0f"),
                f"{sps / base_sps:.2f}x",
                f"{100 * statistics.median(r.wait):.0f}%" if r is not fit else "-",
                f"{wall:.1f}",
                _spread(r.wall, ".1f"),
                f"{wall / base_wall:.2f}x",
                f"{statistics.median(r.acc):.3f}",
            )
        )
    print_table(
        [
            "trainer",
            "samples/s (median)",
            "spread",
            "ratio",
            "data wait",
            "wall s (median)",
            "spread",
            "wall ratio",
            "val acc",
        ],
        rows,
        title=f"Throughput: {len(split.X_train):,} rows x 64 features, {args.epochs} epochs (steady state: "
        f"epochs 2-{args.epochs}), global batch {args.batch_size}; runs: {args.repeats} "
        f"(2 workers: {args.workers2_repeats}); load before: {args.load}",
    )


def _time_to_target(exp_dir: Path, start: float, target: float) -> tuple[float | None, int, float]:
    """(seconds to the first report >= target, epochs trained in all, best accuracy) from Tune's logs.

    A one-worker trial stamps each report with ``time.time()`` (Tune's own stamp is whole seconds).
    """
    first: float | None = None
    epochs, best = 0, 0.0
    for path in exp_dir.glob("*/result.json"):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if "accuracy" not in row:
                continue
            epochs += 1
            best = max(best, float(row["accuracy"]))
            if row["accuracy"] >= target:
                at = float(row["timestamp"]) - start
                first = at if first is None else min(first, at)
    return first, epochs, best


@dataclass
class Search:
    """One search's outcome: what the ASHA/FIFO table compares."""

    scheduler: str
    seed: int
    to_target: float | None
    wall: float
    epochs: int
    stopped: int
    best: float


def _search(
    split: Split,
    model_cfg: ModelConfig,
    scheduler: str,
    seed: int,
    samples: int,
    args: argparse.Namespace,
    storage: str,
) -> Search:
    from raymlops.train.keras import train as tune_keras

    tune_cfg = TuneConfig(
        num_samples=samples,
        scheduler=scheduler,
        seed=seed,
        reduction_factor=3,
        max_concurrent_trials=args.concurrent,
    )
    experiment = f"bench_{scheduler}_{seed}_{samples}"
    start = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # Tune's progress tables: stdout keeps ours
        trained = tune_keras(model_cfg, tune_cfg, split.data, storage_path=storage, experiment=experiment)
    wall = time.time() - start
    to_target, epochs, best = _time_to_target(Path(storage) / experiment, start, args.target)
    return Search(scheduler, seed, to_target, wall, epochs, int(trained.extra["trials_stopped_early"]), best)


def _ratio(asha: float | None, fifo: float | None) -> float | None:
    return None if asha is None or not fifo else asha / fifo


def _tune(args: argparse.Namespace, storage: str) -> None:
    """ASHA versus FIFO over several seeds: each seed samples other configurations in another order.

    Which trial reaches the target first is luck of the draw for one seed (if the first sampled
    config is good, no scheduler can be faster), so the table shows every seed and the median. The
    two schedulers alternate which goes first, after a warm-up search that neither is timed on.
    """
    split = _digits(args.tune_rows)
    model_cfg = ModelConfig(
        name="mlp",
        kind="keras",
        workers=1,
        params={"hidden": [64, 32], "epochs": args.tune_epochs, "batch_size": 64},
        search={"learning_rate": {"loguniform": [1e-5, 1e-2]}},
    )
    _search(split, model_cfg, "fifo", 99, 2, args, storage)  # warm-up: file cache, first actors
    rows, to_target, walls = [], [], []
    for seed in range(args.seeds):
        order = ("fifo", "asha") if seed % 2 == 0 else ("asha", "fifo")
        got = {s: _search(split, model_cfg, s, seed, args.samples, args, storage) for s in order}
        fifo, asha = got["fifo"], got["asha"]
        t_ratio, w_ratio = _ratio(asha.to_target, fifo.to_target), _ratio(asha.wall, fifo.wall)
        if t_ratio is not None:
            to_target.append(t_ratio)
        walls.append(w_ratio or 0.0)
        for run in (fifo, asha):
            is_asha = run is asha
            rows.append(
                (
                    str(seed),
                    run.scheduler.upper(),
                    "not reached" if run.to_target is None else f"{run.to_target:.1f}",
                    (f"{t_ratio:.2f}x" if t_ratio is not None else "-") if is_asha else "",
                    f"{run.wall:.1f}",
                    f"{w_ratio:.2f}x" if is_asha else "",
                    str(run.epochs),
                    str(run.stopped),
                    f"{run.best:.3f}",
                )
            )
    print_table(
        [
            "seed",
            "scheduler",
            f"s to val acc >= {args.target}",
            "vs FIFO",
            "total wall s",
            "vs FIFO",
            "epochs trained",
            "stopped early",
            "best acc",
        ],
        rows,
        title=f"Tune: {args.samples} one-worker trials ({args.concurrent} at a time) x up to "
        f"{args.tune_epochs} epochs, {len(split.X_train):,} rows, the same configs per seed; load before: "
        f"{_load()}",
    )
    print(
        f"ASHA/FIFO, median over {args.seeds} seeds (min-max): time to target "
        f"{_ratio_spread(to_target)} (target <= 0.67x), total wall {_ratio_spread(walls)}"
    )


def _ratio_spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def _load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000, help="training rows for the throughput part")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="runs of fit and of the 1-worker trainer")
    parser.add_argument(
        "--workers2-repeats", type=int, default=2, help="runs of the 2-worker trainer (0: skip)"
    )
    parser.add_argument("--samples", type=int, default=8, help="Tune trials for the ASHA/FIFO part")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once")
    parser.add_argument("--tune-epochs", type=int, default=9)
    parser.add_argument("--tune-rows", type=int, default=20_000, help="training rows per trial")
    parser.add_argument("--target", type=float, default=0.96)
    parser.add_argument("--seeds", type=int, default=3, help="ASHA/FIFO search pairs, one per seed")
    parser.add_argument(
        "--quick", action="store_true", help="20k rows, 4 epochs, 2 repeats, 6 trials, 2 seeds"
    )
    parser.add_argument("--skip-tune", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.epochs, args.repeats, args.workers2_repeats = 20_000, 4, 2, 1
        args.samples, args.tune_rows, args.seeds = 6, 10_000, 2
    args.load = _load()

    import ray

    from raymlops.cluster import connect

    info = connect()
    print(f"{os.cpu_count()} cores; Ray sees {info.cpus:.0f} CPUs, {info.gpus:.0f} GPUs", file=sys.stderr)
    storage = tempfile.mkdtemp(prefix="raymlops-bench-keras-")
    try:
        if not args.skip_throughput:
            _throughput(args, storage)
        if not args.skip_tune:
            _tune(args, storage)
    finally:
        ray.shutdown()
    print(f"load after: {_load()}")


if __name__ == "__main__":
    main()
