"""Keras MLP: plain single-process ``model.fit`` versus raymlops's data-parallel Ray Train runs.

Part 1, throughput. The same MLP (hidden 64-32, Adam, the same global batch) on the same rows
(sklearn digits, tiled with a little noise to ``--rows`` rows so that an epoch is long enough to
time) is trained (a) by ``model.fit`` in this process and (b) by raymlops on Ray Train with 1 and
with 2 workers, whose gradients are all-reduced every step. samples/s is the steady state: the last
epoch's rows over its time (tracing and Ray start-up excluded); wall time, start-up included, is
shown beside it. Ratio = samples/s / ``model.fit``'s samples/s.

Part 2, time to a target validation accuracy on digits (training rows tiled to ``--tune-rows``):
``tune_keras`` with ``--samples`` trials (same seed, so FIFO and ASHA sample the same
configurations), once with FIFO and once with ASHA.
Time to target = from the start of the search to the first epoch report of any trial at or above
``--target``; also total wall time and the epochs trained in all.

Run: ``python benchmarks/train_keras.py [--rows 100000] [--epochs 4] [--samples 4] [--quick]``.
On a shared or small machine Ray's start-up (seconds to minutes per Train run) dominates wall time;
compare samples/s for the training itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table  # noqa: E402

from raymlops.config import KerasParams, ModelConfig, TuneConfig  # noqa: E402
from raymlops.train.base import TrainingData  # noqa: E402


def _digits(rows: int, seed: int = 0) -> TrainingData:
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
    return TrainingData(X_tr, y_tr, X_val, y_val, "classification", list(range(10)), names)


def _plain_fit(params: KerasParams, data: TrainingData) -> tuple[float, float, float]:
    """(samples/s of the last epoch, wall s, validation accuracy) of ``model.fit`` in this process."""
    import keras

    from raymlops.train._keras_worker import build_model
    from raymlops.train.keras import keras_scores, model_spec

    model = build_model(model_spec(params, data))
    model.compile(
        optimizer=keras.optimizers.Adam(params.learning_rate), loss="sparse_categorical_crossentropy"
    )
    epoch_times: list[float] = []

    class _Timer(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            epoch_times.append(time.perf_counter() - self._t)

    start = time.perf_counter()
    model.fit(
        data.X_train,
        data.y_train,
        batch_size=params.batch_size,
        epochs=params.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[_Timer()],
    )
    wall = time.perf_counter() - start
    acc = float((keras_scores(model, data.X_val).argmax(axis=1) == data.y_val).mean())
    return len(data.X_train) / epoch_times[-1], wall, acc


def _raymlops_fit(
    params: KerasParams, data: TrainingData, workers: int, storage: str
) -> tuple[float, float, float, float]:
    """(samples/s of the last epoch, wall s, val accuracy, share of that epoch spent waiting for data)."""
    from raymlops.train.keras import train_keras_distributed

    start = time.perf_counter()
    run = train_keras_distributed(
        params,
        data,
        workers=workers,
        use_gpu="auto",
        max_failures=0,
        storage_path=storage,
        name=f"bench_{workers}w_{int(time.time())}",
        report_to_tune=False,
    )
    wall = time.perf_counter() - start
    m = run.metrics
    wait = float(m.get("data_wait_s", 0.0)) / max(float(m["epoch_time_s"]), 1e-9)
    return float(m["samples_per_s"]), wall, float(m["accuracy"]), wait


def _time_to_target(exp_dir: Path, start: float, target: float) -> tuple[float | None, int, float]:
    """(seconds to the first report >= target, epochs trained in all, best accuracy) from Tune's logs."""
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000, help="training rows for the throughput part")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4, help="Tune trials for the ASHA/FIFO part")
    parser.add_argument("--tune-epochs", type=int, default=12)
    parser.add_argument(
        "--tune-rows", type=int, default=30_000, help="training rows per trial: epochs long enough to matter"
    )
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--quick", action="store_true", help="20k rows, 3 trials of up to 8 epochs")
    parser.add_argument("--skip-tune", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.samples, args.tune_epochs, args.tune_rows = 20_000, 3, 8, 10_000

    from raymlops.cluster import connect

    info = connect()
    print(f"{os.cpu_count()} cores; Ray sees {info.cpus:.0f} CPUs, {info.gpus:.0f} GPUs", file=sys.stderr)
    storage = tempfile.mkdtemp(prefix="raymlops-bench-keras-")
    params = KerasParams(hidden=[64, 32], epochs=args.epochs, batch_size=args.batch_size, learning_rate=0.003)
    data = _digits(args.rows)

    base_sps, base_wall, base_acc = _plain_fit(params, data)
    rows: list[tuple[Any, ...]] = [
        (
            "keras model.fit, 1 process",
            f"{base_sps:,.0f}",
            "1.00x",
            "-",
            f"{base_wall:.1f}",
            f"{base_acc:.3f}",
        )
    ]
    for workers in (1, 2):
        sps, wall, acc, wait = _raymlops_fit(params, data, workers, storage)
        rows.append(
            (
                f"raymlops Ray Train, {workers} worker(s)",
                f"{sps:,.0f}",
                f"{sps / base_sps:.2f}x",
                f"{100 * wait:.0f}%",
                f"{wall:.1f}",
                f"{acc:.3f}",
            )
        )
    print_table(
        [
            "trainer",
            "samples/s (last epoch)",
            "ratio vs fit",
            "data wait",
            "wall s (incl. start-up)",
            "val acc",
        ],
        rows,
        title=f"Throughput: {len(data.X_train):,} rows x {data.n_features} features, {args.epochs} epochs, "
        f"global batch {args.batch_size}",
    )
    if args.skip_tune:
        return

    from raymlops.train.keras import tune_keras

    small = _digits(args.tune_rows)
    model_cfg = ModelConfig(
        name="mlp",
        kind="keras",
        workers=1,
        params={"hidden": [64, 32], "epochs": args.tune_epochs, "batch_size": 64},
        search={"learning_rate": {"loguniform": [1e-4, 2e-2]}},
    )
    tune_rows = []
    for scheduler in ("fifo", "asha"):
        tune_cfg = TuneConfig(num_samples=args.samples, scheduler=scheduler, seed=0, reduction_factor=2)
        start = time.time()
        with contextlib.redirect_stdout(sys.stderr):  # Tune's progress tables: stdout keeps ours
            trained = tune_keras(
                model_cfg, tune_cfg, small, storage_path=storage, experiment=f"bench_{scheduler}"
            )
        wall = time.time() - start
        to_target, epochs, best = _time_to_target(Path(storage) / f"bench_{scheduler}", start, args.target)
        tune_rows.append(
            (
                scheduler.upper(),
                "not reached" if to_target is None else f"{to_target:.0f}",
                f"{wall:.0f}",
                str(epochs),
                str(trained.extra["trials_stopped_early"]),
                f"{best:.3f}",
            )
        )
    print_table(
        [
            "scheduler",
            f"s to val acc >= {args.target}",
            "total wall s",
            "epochs trained",
            "stopped early",
            "best acc",
        ],
        tune_rows,
        title=f"Tune: {args.samples} trials x up to {args.tune_epochs} epochs, {len(small.X_train):,} rows "
        "(same configs)",
    )


if __name__ == "__main__":
    main()
