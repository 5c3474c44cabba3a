"""Training at scale: ``raymlops run`` on generated Parquet against a plain pandas + scikit-learn/Keras run.

For each size (default 1M and 10M rows x 50 features) and model kind (a random forest and a Keras
MLP) it runs the real CLI, ``raymlops run PIPELINE --json``, and records wall time, rows/s, the peak
RSS of the driver process alone, the peak of the whole process tree (PSS, so the object store is
counted once) and the held-out accuracy. At the sizes where it fits in memory it runs, in the same
run, the plain single-process way: ``pandas.read_parquet`` of the folder, ``train_test_split``,
scikit-learn's forest (``n_jobs=2``) or Keras ``model.fit`` on the arrays.

Targets (issue 12): driver peak at 10M <= 1.2x its peak at 1M; process tree at 10M below 8 GB;
accuracy at 1M within 0.01 of the in-memory path.

Run: ``python benchmarks/train_scale.py [--sizes 1000000 10000000] [--kinds forest keras]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import mb, print_table, tree_memory  # noqa: E402

BIN = Path(sys.executable).parent
DATA_ROOT = Path(os.environ.get("RAYMLOPS_BENCH_DATA", tempfile.gettempdir())) / "raymlops-bench-scale"

_PIPELINES = {
    "forest": {
        "name": "scale_forest",
        "models": [
            {
                "name": "rf",
                "kind": "random_forest",
                "workers": 2,
                "params": {"n_estimators": 8, "max_depth": 8},
            }
        ],
    },
    "keras": {
        "name": "scale_keras",
        "preprocess": [{"standard_scaler": {"columns": "numeric"}}],
        "models": [
            {
                "name": "mlp",
                "kind": "keras",
                "workers": 1,
                "params": {"hidden": [64, 32], "epochs": 2, "batch_size": 1024, "learning_rate": 0.002},
            }
        ],
    },
}

_BASELINE = textwrap.dedent(
    """
    import sys, json, time
    import numpy as np, pandas as pd
    from sklearn.model_selection import train_test_split
    kind, folder = sys.argv[1], sys.argv[2]
    t = time.time()
    frame = pd.read_parquet(folder)
    X = frame.drop(columns=["id", "label"]).to_numpy(np.float32); y = frame["label"].to_numpy()
    del frame
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=42, stratify=y)
    if kind == "forest":
        from sklearn.ensemble import RandomForestClassifier
        model = RandomForestClassifier(n_estimators=8, max_depth=8, n_jobs=2, random_state=0).fit(X_tr, y_tr)
        acc = float((model.predict(X_te) == y_te).mean())
    else:
        import keras
        mean, std = X_tr.mean(0), X_tr.std(0) + 1e-8
        X_tr = (X_tr - mean) / std; X_te = (X_te - mean) / std
        k = int(y.max()) + 1
        layers = [keras.Input((X.shape[1],)), keras.layers.Dense(64, activation="relu"),
                  keras.layers.Dense(32, activation="relu"), keras.layers.Dense(k, activation="softmax")]
        model = keras.Sequential(layers)
        model.compile(keras.optimizers.Adam(0.002), "sparse_categorical_crossentropy")
        model.fit(X_tr, y_tr, batch_size=1024, epochs=2, verbose=0)
        acc = float((model.predict(X_te, batch_size=8192, verbose=0).argmax(1) == y_te).mean())
    print(json.dumps({"accuracy": acc, "seconds": time.time() - t}))
    """
)


@dataclass
class Run:
    wall_s: float
    driver_peak: int
    tree_peak: int
    accuracy: float | None
    ok: bool
    note: str = ""


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _measure(
    cmd: list[str], env: dict[str, str], timeout_s: float
) -> tuple[subprocess.CompletedProcess[str], Run]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"driver": 0, "tree": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peaks["driver"] = max(peaks["driver"], _rss(proc.pid))
            peaks["tree"] = max(peaks["tree"], tree_memory(proc.pid))
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    done.set()
    sampler.join()
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    run = Run(time.perf_counter() - started, peaks["driver"], peaks["tree"], None, proc.returncode == 0)
    return result, run


def _data(rows: int, features: int) -> Path:
    folder = DATA_ROOT / f"rows{rows}_f{features}"
    if (folder / "_done").exists():
        return folder
    shards = max(1, rows // 500_000)
    print(f"generating {rows:,} rows x {features} features into {folder} ...", file=sys.stderr, flush=True)
    subprocess.run(
        [str(BIN / "raymlops"), "datagen", "--rows", str(rows), "--features", str(features),
         "--output", str(folder), "--shards", str(shards), "--overwrite"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    (folder / "_done").write_text("ok")
    return folder


def _pipeline(kind: str, folder: Path, tmp: Path) -> Path:
    import yaml

    doc = {
        "name": _PIPELINES[kind]["name"],
        "data": {"source": str(folder), "target": "label", "exclude": ["id"], "split": {"key": "id"}},
        **{k: v for k, v in _PIPELINES[kind].items() if k != "name"},
        "tune": {"num_samples": 1},
        "gate": {"min": {"accuracy": 0.5}},
    }
    path = tmp / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _raymlops(kind: str, folder: Path, tmp: Path, timeout_s: float) -> Run:
    env = {**os.environ, "RAYMLOPS_STORE": str(tmp / f"store-{kind}")}
    result, run = _measure(
        [str(BIN / "raymlops"), "run", str(_pipeline(kind, folder, tmp)), "--json"], env, timeout_s
    )
    if result.returncode == 0:
        summary = json.loads(result.stdout)
        run.accuracy = summary["metrics"].get("accuracy")
    else:
        run.note = (result.stderr.strip().splitlines() or ["failed"])[-1][:120]
    return run


def _baseline(kind: str, folder: Path, timeout_s: float) -> Run:
    result, run = _measure([sys.executable, "-c", _BASELINE, kind, str(folder)], dict(os.environ), timeout_s)
    if result.returncode == 0:
        run.accuracy = json.loads(result.stdout.strip().splitlines()[-1])["accuracy"]
    else:
        run.note = (result.stderr.strip().splitlines() or ["failed"])[-1][:120]
    return run


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--kinds", nargs="+", default=["forest", "keras"], choices=sorted(_PIPELINES))
    parser.add_argument(
        "--baseline-max-rows", type=int, default=3_000_000, help="largest size the plain run gets"
    )
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    rows_out = []
    results: dict[tuple[str, int], Run] = {}
    with tempfile.TemporaryDirectory(prefix="raymlops-scale-") as tmp_name:
        tmp = Path(tmp_name)
        for size in args.sizes:
            folder = _data(size, args.features)
            for kind in args.kinds:
                mine = _raymlops(kind, folder, tmp, args.timeout)
                results[(kind, size)] = mine
                base = _baseline(kind, folder, args.timeout) if size <= args.baseline_max_rows else None
                rows_out.append(
                    [
                        f"{size:,}",
                        kind,
                        f"{mine.wall_s:.0f} s" if mine.ok else f"failed: {mine.note}",
                        f"{size / mine.wall_s:,.0f}",
                        mb(mine.driver_peak),
                        mb(mine.tree_peak),
                        f"{mine.accuracy:.4f}" if mine.accuracy is not None else "-",
                        f"{base.wall_s:.0f} s"
                        if base and base.ok
                        else ("-" if base is None else f"failed: {base.note}"),
                        mb(base.tree_peak) if base and base.ok else "-",
                        f"{base.accuracy:.4f}" if base and base.accuracy is not None else "-",
                        f"{mine.tree_peak / base.tree_peak:.2f}x"
                        if base and base.ok and base.tree_peak
                        else "-",
                    ]
                )
                print(f"done {kind} at {size:,} rows", file=sys.stderr, flush=True)
    print_table(
        ["rows", "kind", "raymlops wall", "rows/s", "driver peak", "tree peak", "accuracy",
         "plain wall", "plain peak", "plain accuracy", "tree peak / plain"],
        rows_out,
        title=f"train_scale ({args.features} features; load {os.getloadavg()[0]:.1f})",
    )  # fmt: skip
    if len(args.sizes) >= 2:
        small, large = min(args.sizes), max(args.sizes)
        for kind in args.kinds:
            a, b = results.get((kind, small)), results.get((kind, large))
            if a and b and a.ok and b.ok and a.driver_peak:
                ratio = b.driver_peak / a.driver_peak
                print(
                    f"{kind}: driver peak at {large:,} / at {small:,} = {ratio:.2f} (target <= 1.2); "
                    f"tree peak at {large:,} = {mb(b.tree_peak)} (target < 8 GB)"
                )
    return 0 if all(r.ok for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
