"""Random forest: tree-parallel raymlops versus scikit-learn on the same machine.

Fit time on generated rows (default 1M × 50) for scikit-learn ``n_jobs=-1`` versus raymlops's
tree-parallel fit on Ray (same seed, so the very same forest), the accuracy of both, and predict
rows/s for scikit-learn versus the compiled ONNX form. Run: ``python benchmarks/train_forest.py``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.datasets import make_classification
from sklearn.model_selection import train_test_split

from raymlops.cluster import connect
from raymlops.model.random_forest import ForestParams, compile_forest, onnx_scores
from raymlops.train.random_forest import fit_forest, forest_estimator


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--trees", type=int, default=16)
    parser.add_argument("--max-depth", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    console = Console(stderr=True)

    X, y = make_classification(
        n_samples=args.rows, n_features=args.features, n_informative=args.features // 2, random_state=0
    )
    X = X.astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.1, random_state=0)
    params = ForestParams(n_estimators=args.trees, max_depth=args.max_depth, random_state=0)
    info = connect()
    console.print(
        f"{args.rows:,} rows × {args.features} features, {args.trees} trees; "
        f"{os.cpu_count()} cores, Ray sees {info.cpus:.0f} CPUs"
    )

    sk = forest_estimator("classification", params).set_params(n_jobs=-1)
    _, sk_fit = _timed(sk.fit, X_train, y_train)
    sk_acc = float((sk.predict(X_test) == y_test).mean())
    rows = [("scikit-learn n_jobs=-1", sk_fit, sk_acc, 1.0)]
    for workers in args.workers:
        forest, t = _timed(
            fit_forest, X_train, y_train, "classification", params, workers=workers, n_classes=2
        )
        acc = float((forest.predict(X_test) == y_test).mean())
        # sklearn sums tree votes in threads, so compare up to float rounding.
        same = np.allclose(forest.predict_proba(X_test[:2000]), sk.predict_proba(X_test[:2000]))
        rows.append((f"raymlops tree-parallel, {workers} workers (same forest: {same})", t, acc, sk_fit / t))

    table = Table(title="Fit time (lower is better); ratio = sklearn time / this time")
    for col in ("trainer", "fit s", "accuracy", "speed ratio"):
        table.add_column(col)
    for name, t, acc, ratio in rows:
        table.add_row(name, f"{t:.1f}", f"{acc:.4f}", f"{ratio:.2f}x")
    console.print(table)

    model_bytes, report = compile_forest(sk, "classification", X_test[:5000])
    import onnxruntime as ort

    if model_bytes is None:
        console.print(f"no ONNX form: {report.get('reason')}")
        return
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    batch = X_test[:100_000]
    _, sk_batch = _timed(sk.predict_proba, batch)
    _, onnx_batch = _timed(onnx_scores, session, batch, "classification")
    one = X_test[:1]
    n = 200
    _, sk_one = _timed(lambda: [sk.predict_proba(one) for _ in range(n)])
    _, onnx_one = _timed(lambda: [onnx_scores(session, one, "classification") for _ in range(n)])
    title = f"Predict (ONNX kept: {report.get('onnx')}, max |Δp| {report.get('max_abs_diff'):.1e})"
    table = Table(title=title)
    for col in (
        "predictor",
        f"rows/s ({len(batch):,}-row batch)",
        "one-row latency ms",
        "ratio vs sklearn (batch / one row)",
    ):
        table.add_column(col)
    table.add_row(
        "scikit-learn predict_proba",
        f"{len(batch) / sk_batch:,.0f}",
        f"{sk_one / n * 1e3:.2f}",
        "1.00x / 1.00x",
    )
    table.add_row(
        "onnxruntime",
        f"{len(batch) / onnx_batch:,.0f}",
        f"{onnx_one / n * 1e3:.3f}",
        f"{sk_batch / onnx_batch:.2f}x / {sk_one / onnx_one:.1f}x",
    )
    console.print(table)


if __name__ == "__main__":
    main()
