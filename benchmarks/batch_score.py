"""Batch scoring: ``raymlops score`` versus a single-process pandas baseline, in the same run.

For each row count (default 1M and 10M rows × 50 features, generated as Parquet shards) and each
model (a RandomForest, and a Keras MLP when ``raymlops.train.keras`` is available), it runs

* the baseline: one Python process reads each shard with pandas, applies the model's saved
  preprocessing, predicts, and writes the shard with the predictions (no schema checks), and
* ``raymlops score --json`` (its own embedded Ray; Ray's start-up is inside its time),

each in a fresh process whose whole tree (Ray workers included) is sampled for peak memory and CPU
seconds (which, unlike wall time, do not depend on what else a shared machine is running), then
prints rows/s, the ratio, CPU seconds and peak memory, and checks the targets: raymlops at least 1.6× the
baseline's throughput at the largest size, and its peak memory there at most 1.2× that at the
smallest. Run: ``python benchmarks/batch_score.py [--rows 1000000,10000000] [--quick]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import mb, print_table, run_measured  # noqa: E402

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TRAIN_ROWS = 20_000
THROUGHPUT_TARGET = 1.6
MEMORY_TARGET = 1.2


def _raymlops(*args: str) -> list[str]:
    exe = BIN / "raymlops"
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "raymlops.cli", *args]


def _pipeline(name: str, kind: str, train_dir: Path) -> str:
    params = (
        "{n_estimators: 100, max_depth: 10, random_state: 0}"
        if kind == "random_forest"
        else "{hidden: [64, 32], epochs: 3, batch_size: 256, learning_rate: 0.001}"
    )
    return f"""name: {name}
data:
  source: {train_dir}
  target: label
  exclude: [id]
  split: {{test_size: 0.2, validation_size: 0.2, seed: 42, stratify: true}}
validation: {{max_null_fraction: 0.0, forbid_constant_columns: false}}
preprocess:
  - standard_scaler: {{columns: numeric}}
models:
  - {{name: m, kind: {kind}, workers: 1, params: {params}}}
tune: {{num_samples: 1, metric: accuracy, mode: max}}
gate: {{min: {{accuracy: 0.5}}}}
deploy: {{promote_to: champion}}
"""


def _check(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def _trained_before(store: Path, name: str) -> str | None:
    """The latest version of ``name`` already in the benchmark's store (kept between runs)."""
    from raymlops.registry import ModelNotFoundError, ModelStore

    try:
        versions = ModelStore(str(store)).list_versions(name)
    except ModelNotFoundError:
        return None
    return f"{name}:{versions[-1].version}" if versions else None


def _train(work: Path, features: int, kinds: list[str], retrain: bool) -> dict[str, str]:
    """Train one model of each kind on generated rows; returns kind -> exact model reference."""
    train_dir = work / "train"
    store = work / "store"
    refs = {}
    if not retrain:
        for kind in kinds:
            ref = _trained_before(store, f"bench_{'rf' if kind == 'random_forest' else kind}")
            if ref:
                refs[kind] = ref
                print(f"reusing {ref} (--retrain to train again)", file=sys.stderr)
        kinds = [k for k in kinds if k not in refs]
        if not kinds:
            return refs
    _check(
        _raymlops(
            "datagen",
            "--rows",
            str(TRAIN_ROWS),
            "--features",
            str(features),
            "--output",
            str(train_dir),
            "--overwrite",
            "--json",
        ),
        "datagen (training rows)",
    )
    for kind in kinds:
        name = f"bench_{'rf' if kind == 'random_forest' else kind}"
        cfg = work / f"{name}.yaml"
        cfg.write_text(_pipeline(name, kind, train_dir))
        try:
            summary = json.loads(
                _check(_raymlops("run", str(cfg), "--store", str(store), "--json"), f"training {kind}")
            )
        except RuntimeError as err:
            print(f"skipping {kind}: {str(err).splitlines()[0]}", file=sys.stderr)
            continue
        refs[kind] = f"{name}:{summary['version']}"
        print(
            f"trained {refs[kind]} (accuracy {summary['metrics'].get('accuracy', float('nan')):.3f})",
            file=sys.stderr,
        )
    return refs


def baseline(ref: str, store: str, input_dir: str, output_dir: str) -> dict[str, Any]:
    """The single-process baseline: pandas read, the model's preprocessing and predict, pandas write."""
    import pandas as pd
    from raymlops.bundle import ModelBundle

    started = time.perf_counter()
    bundle = ModelBundle.load(ref, store)
    os.makedirs(output_dir, exist_ok=True)
    rows = 0
    for i, path in enumerate(sorted(Path(input_dir).glob("*.parquet"))):
        frame = pd.read_parquet(path)
        scores = bundle.scores(bundle.transform(frame[bundle.schema.features]))
        preds = bundle.predictions_frame(scores, index=frame.index)
        pd.concat([frame, preds], axis=1).to_parquet(Path(output_dir) / f"part-{i:05d}.parquet", index=False)
        rows += len(frame)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def _parse_rows(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
        out.append(int(float(part.rstrip("km")) * scale))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="1000000,10000000", help="Comma-separated row counts (1M, 250k ok)")
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="100k and 1M rows, RandomForest only")
    parser.add_argument("--models", default="random_forest,keras", help="random_forest and/or keras")
    parser.add_argument(
        "--workdir", default=os.environ.get("RAYMLOPS_BENCH_DIR", "/tmp/raymlops-bench-score")
    )
    parser.add_argument("--workers", type=int, default=None, help="raymlops score --workers")
    parser.add_argument("--keep-data", action="store_true", help="Keep generated inputs and outputs")
    parser.add_argument("--retrain", action="store_true", help="Train the models again (default: reuse)")
    parser.add_argument("--strict", action="store_true", help="Exit 1 when a target is missed")
    parser.add_argument(
        "--baseline", nargs=4, metavar=("REF", "STORE", "INPUT", "OUTPUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.baseline:
        print(json.dumps(baseline(*args.baseline)))
        return 0

    sizes = [100_000, 1_000_000] if args.quick else _parse_rows(args.rows)
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    if args.quick:
        kinds = ["random_forest"]
    if "keras" in kinds and importlib.util.find_spec("raymlops.train.keras") is None:
        print("skipping keras: raymlops.train.keras is not available", file=sys.stderr)
        kinds.remove("keras")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores; workdir {work}", file=sys.stderr)
    refs = _train(work, args.features, kinds, args.retrain)
    if not refs:
        print("no model could be trained", file=sys.stderr)
        return 1
    store = str(work / "store")

    results: list[dict[str, Any]] = []
    for n in sizes:
        data = work / f"input-{n}"
        if not (data / "_DONE").exists():
            shutil.rmtree(data, ignore_errors=True)
            _check(
                _raymlops(
                    "datagen",
                    "--rows",
                    str(n),
                    "--features",
                    str(args.features),
                    "--output",
                    str(data),
                    "--json",
                ),
                f"datagen {n}",
            )
            (data / "_DONE").write_text("")
        for kind, ref in refs.items():
            base_out, ours_out = work / f"baseline-out-{n}", work / f"score-out-{n}"
            for folder in (base_out, ours_out):
                shutil.rmtree(folder, ignore_errors=True)
            print(f"{n:,} rows, {kind}: baseline ...", file=sys.stderr, flush=True)
            base = run_measured(
                [
                    sys.executable,
                    str(HERE / "batch_score.py"),
                    "--baseline",
                    ref,
                    store,
                    str(data),
                    str(base_out),
                ]
            )
            if base.returncode != 0:
                raise RuntimeError(f"baseline failed:\n{base.stderr[-3000:]}")
            b = json.loads(base.stdout.strip().splitlines()[-1])
            shutil.rmtree(base_out, ignore_errors=True)
            print(f"{n:,} rows, {kind}: raymlops score ...", file=sys.stderr, flush=True)
            cmd = _raymlops(
                "score", ref, "--store", store, "--input", str(data), "--output", str(ours_out), "--json"
            )
            if args.workers:
                cmd += ["--workers", str(args.workers)]
            ours = run_measured(cmd)
            if ours.returncode != 0:
                raise RuntimeError(f"raymlops score failed:\n{ours.stderr[-3000:]}")
            s = json.loads(ours.stdout)
            if not (s["rows_in"] == n and s["rows_scored"] + s["rows_rejected"] == n):
                raise RuntimeError(f"raymlops score lost rows: {s}")
            if not args.keep_data:
                shutil.rmtree(ours_out, ignore_errors=True)
            results.append(
                {
                    "rows": n,
                    "model": kind,
                    "base_rps": b["rows_per_s"],
                    "ours_rps": s["rows_in"] / s["seconds"],
                    "base_s": b["seconds"],
                    "ours_s": s["seconds"],
                    "base_wall": base.wall_s,
                    "ours_wall": ours.wall_s,
                    "base_peak": base.peak_bytes,
                    "ours_peak": ours.peak_bytes,
                    "base_cpu": base.cpu_s,
                    "ours_cpu": ours.cpu_s,
                    "ours_cpu_top": {k: round(v, 1) for k, v in list(ours.cpu_by_name.items())[:6]},
                    "workers": s["workers"],
                }
            )
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        if not args.keep_data and n > 1_000_000:
            shutil.rmtree(data, ignore_errors=True)

    rows = [
        (
            f"{r['rows']:,}",
            r["model"],
            f"{r['base_rps']:,.0f}",
            f"{r['ours_rps']:,.0f}",
            f"{r['ours_rps'] / r['base_rps']:.2f}x",
            f"{r['base_s']:.1f} / {r['ours_s']:.1f}",
            f"{r['base_cpu']:.0f} / {r['ours_cpu']:.0f}",
            mb(r["base_peak"]),
            mb(r["ours_peak"]),
            r["workers"],
        )
        for r in results
    ]
    print_table(
        [
            "rows",
            "model",
            "baseline rows/s",
            "raymlops rows/s",
            "ratio",
            "seconds (base / ours)",
            "CPU s (base / ours)",
            "baseline peak",
            "raymlops peak",
            "actors",
        ],
        rows,
        title=f"batch scoring, {args.features} features, {os.cpu_count()} cores "
        "(raymlops time includes Ray start-up; peak = PSS of the whole process tree)",
    )
    ok = True
    largest, smallest = max(sizes), min(sizes)
    for kind in refs:
        by_n = {r["rows"]: r for r in results if r["model"] == kind}
        ratio = by_n[largest]["ours_rps"] / by_n[largest]["base_rps"]
        verdict = "ok" if ratio >= THROUGHPUT_TARGET else "MISSED"
        print(
            f"{kind}: throughput at {largest:,} rows {ratio:.2f}x baseline "
            f"(target >= {THROUGHPUT_TARGET}x): {verdict}"
        )
        ok &= ratio >= THROUGHPUT_TARGET
        if largest != smallest:
            growth = by_n[largest]["ours_peak"] / by_n[smallest]["ours_peak"]
            verdict = "ok" if growth <= MEMORY_TARGET else "MISSED"
            print(
                f"{kind}: peak memory {largest:,} vs {smallest:,} rows {growth:.2f}x "
                f"(target <= {MEMORY_TARGET}x): {verdict}"
            )
            ok &= growth <= MEMORY_TARGET
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
