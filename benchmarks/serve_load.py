"""Closed-loop HTTP load: `raymlops serve` against the fastest plain server of the same models, one run.

The baseline is what a person would write by hand to serve these two models as fast as possible: one
Starlette app in one uvicorn process that parses the body with orjson, applies the version's fitted
scaling as two numpy operations (read from its ``features.json``) and calls the model's fastest form
directly: onnxruntime on ``model.onnx`` for the forest, a compiled ``tf.function`` for the Keras MLP.
It does no row checks, no auth, no metrics and no request log. raymlops serve answers the same
``POST /v1/models/NAME:predict`` with one row per request, with its full path (auth, checks, batching,
metrics), on ``--replicas`` replicas (default 2) and the ingress asked for (default ``auto``:
HAProxy when installed).

Both servers stay up and are measured in turns, cell by cell, so that load from other processes falls
on both alike. Each of C client connections sends a request, waits for the answer and sends the next
(closed loop), at C = 1, 8 and 32; the client is a minimal asyncio HTTP/1.1 keep-alive loop so that it
takes as little CPU as possible. The machine's load average is printed with the table.

Targets (issue 13): p50 at 1 client within 2 ms of bare, for both models; at 32 clients at least
0.5x bare's req/s with p99 <= 50 ms.

    python benchmarks/serve_load.py [--seconds 5] [--ingress auto] [--models forest,keras] [--json]
    python benchmarks/serve_load.py --startup      # also time `raymlops serve` to its first answer
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

CONCURRENCY = (1, 8, 32)
API_KEY = "bench-key"
MODELS = {"forest": "digits_rf", "keras": "digits_mlp"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- the bare baseline ----------------------------------------------------------------------------
def _affine(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    plan = json.loads((folder / "features.json").read_text())
    scale = np.array([s["affine"][0] if s["affine"][0] is not None else 0.0 for s in plan["steps"]])
    shift = np.array([s["affine"][1] if s["affine"][1] is not None else 0.0 for s in plan["steps"]])
    return scale.astype(np.float32), shift.astype(np.float32)


def _bare_forest(folder: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda X: session.run(None, {name: X})[1]


def _bare_keras(folder: Path) -> Any:
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = keras.saving.load_model(str(folder / "model.keras"), safe_mode=True, compile=False)
    n = int(model.inputs[0].shape[-1])
    fn = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, n], tf.float32)]
    )
    return lambda X: fn(X).numpy()


def run_bare(folders: dict[str, str], port: int) -> None:
    """One Starlette app: orjson in, numpy scaling, the model's fastest call, orjson out."""
    import orjson
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    routes = []
    for name, folder in folders.items():
        path = Path(folder)
        scale, shift = _affine(path)
        kind = json.loads((path / "metadata.json").read_text())["kind"]
        predict = _bare_forest(path) if kind == "random_forest" else _bare_keras(path)

        def make(scale: np.ndarray, shift: np.ndarray, predict: Any) -> Any:
            async def handler(request: Request) -> Response:
                X = np.asarray(orjson.loads(await request.body())["instances"], dtype=np.float32)
                proba = np.asarray(predict(X * scale + shift), dtype=np.float64)
                out = [
                    {"prediction": int(p), "probabilities": row}
                    for p, row in zip(proba.argmax(axis=1).tolist(), proba.tolist(), strict=True)
                ]
                return Response(orjson.dumps({"predictions": out}), media_type="application/json")

            return handler

        routes.append(Route(f"/v1/models/{name}:predict", make(scale, shift, predict), methods=["POST"]))

    async def ready(request: Request) -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    routes.append(Route("/ready", ready))
    uvicorn.run(Starlette(routes=routes), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---- the load generator ---------------------------------------------------------------------------
def _request_bytes(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


async def _client(
    port: int, request: bytes, stop_at: float, warm_until: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if started >= warm_until:
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors.append(status)
    finally:
        writer.close()


def measure(
    port: int,
    path: str,
    concurrency: int,
    seconds: float,
    body: bytes,
    warmup_s: float = 0.5,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Closed-loop load at ``concurrency`` for ``seconds`` after a warm-up; req/s and percentiles."""
    request = _request_bytes(path, body, headers)

    async def run() -> tuple[list[float], list[int]]:
        latencies: list[float] = []
        errors: list[int] = []
        now = time.perf_counter()
        warm_until, stop_at = now + warmup_s, now + warmup_s + seconds
        await asyncio.gather(
            *(_client(port, request, stop_at, warm_until, latencies, errors) for _ in range(concurrency))
        )
        return latencies, errors

    latencies, errors = asyncio.run(run())
    ms = np.asarray(latencies) * 1000.0
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "rps": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "errors": len(errors),
    }


def _wait_http(port: int, path: str, timeout_s: float = 180.0, proc: Any = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"nothing answered on port {port} within {timeout_s} s")


# ---- models -----------------------------------------------------------------------------------------
def train_models(store: str, which: list[str]) -> dict[str, str]:
    """The digits demo's two kinds, one trial each: a 200-tree forest (ONNX) and the Keras MLP."""
    import yaml

    from raymlops._console import json_stdout
    from raymlops.config import PipelineConfig
    from raymlops.pipeline import run_pipeline

    base = yaml.safe_load((ROOT / "pipelines" / "digits.yaml").read_text())
    by_kind = {"forest": "random_forest", "keras": "keras"}
    refs = {}
    for label in which:
        raw = {**base, "name": MODELS[label], "tune": {**base["tune"], "num_samples": 1}}
        model = next(m for m in base["models"] if m["kind"] == by_kind[label])
        model = {**model, "workers": 1, "search": {}}
        if label == "keras":
            model["params"] = {**model["params"], "epochs": 3}
        raw["models"] = [model]
        raw["gate"] = {}
        with json_stdout(True):
            summary = run_pipeline(PipelineConfig.model_validate(raw), store=store)
        refs[label] = f"{MODELS[label]}:{summary['version']}"
    return refs


def _row(features: list[str]) -> list[float]:
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame
    return [float(frame[f].iloc[3]) for f in features]


def time_to_first_answer(store: str, ref: str) -> float:
    """Seconds from launching `raymlops serve REF` (its own embedded Ray) to its first 200."""
    import httpx

    port = free_port()
    env = {**os.environ, "RAYMLOPS_API_KEY": API_KEY}
    env.pop("RAY_ADDRESS", None)
    from raymlops.model import ModelBundle

    body = {"instances": [_row(ModelBundle.load(ref, store).schema.features)]}
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "raymlops.cli", "serve", ref, "--store", store, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    name = ref.split(":")[0]
    try:
        while time.monotonic() - started < 180:
            if proc.poll() is not None:
                raise RuntimeError(f"raymlops serve exited with {proc.returncode}")
            try:
                r = httpx.post(
                    f"http://127.0.0.1:{port}/v1/models/{name}:predict",
                    json=body,
                    headers={"Authorization": f"Bearer {API_KEY}"},
                    timeout=2,
                )
                if r.status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("raymlops serve did not answer within 180 s")
    finally:
        import signal

        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# ---- the run ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store",
        help="A store for digits_rf / digits_mlp: trained into it when missing (default: a temp one)",
    )
    parser.add_argument("--models", default="forest,keras", help="forest, keras or both")
    parser.add_argument("--seconds", type=float, default=5.0, help="Measured seconds per cell")
    parser.add_argument("--ingress", default="auto", help="auto, haproxy, direct or proxy")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument(
        "--replicas",
        type=int,
        default=2,
        help="raymlops replicas (default 2: one per core, where `raymlops serve`'s autoscaling "
        "settles under load on this machine; fixed so that no cell waits for a scale-up)",
    )
    parser.add_argument(
        "--startup", action="store_true", help="Also time `raymlops serve` to its first answer"
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout")
    parser.add_argument("--bare-port", type=int, help=argparse.SUPPRESS)  # internal: run the baseline
    parser.add_argument("--bare-folders", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.bare_port:
        run_bare(json.loads(args.bare_folders), args.bare_port)
        return 0

    from raymlops.cluster import connect
    from raymlops.config import ServeOptions
    from raymlops.model import ModelBundle
    from raymlops.registry import ModelStore
    from raymlops.serve import start_server

    which = [m.strip() for m in args.models.split(",") if m.strip()]
    connect()
    tmp = tempfile.TemporaryDirectory(prefix="raymlops-serve-bench-")
    store = args.store or str(Path(tmp.name) / "store")
    st = ModelStore(store)
    have = set(st.list_models()) if args.store and Path(store).exists() else set()
    missing = [k for k in which if MODELS[k] not in have]
    refs = {k: st.get(MODELS[k]).ref for k in which if k not in missing}
    refs.update(train_models(store, missing) if missing else {})
    refs = {k: refs[k] for k in which}
    folders = {ref.split(":")[0]: str(ModelStore(store).fetch(ref)[1]) for ref in refs.values()}
    bodies = {
        label: json.dumps({"instances": [_row(ModelBundle.load(ref, store).schema.features)]}).encode()
        for label, ref in refs.items()
    }

    bare_port, serve_port = free_port(), free_port()
    bare = subprocess.Popen(
        [sys.executable, __file__, "--bare-port", str(bare_port), "--bare-folders", json.dumps(folders)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # one thread per library, as a raymlops replica
    )
    options = ServeOptions.model_validate(
        {
            "min_replicas": args.replicas,
            "max_replicas": args.replicas,
            "num_cpus": 0.5,
            "max_ongoing_requests": 100,
            "max_batch_size": args.max_batch_size,
            "batch_wait_timeout_s": 0.001,
            "ingress": args.ingress,
        }
    )
    rows: list[dict[str, Any]] = []
    auth = {"Authorization": f"Bearer {API_KEY}"}
    handle = None
    try:
        handle = start_server(
            list(refs.values()), store=store, port=serve_port, options=options, api_key=API_KEY
        )
        _wait_http(bare_port, "/ready", proc=bare)
        for label, ref in refs.items():
            path = f"/v1/models/{ref.split(':')[0]}:predict"
            for port, headers in ((bare_port, None), (serve_port, auth)):
                measure(port, path, 8, 1.0, bodies[label], headers=headers)  # warm both
            for c in CONCURRENCY:
                for server, port, headers in (("bare", bare_port, None), ("raymlops", serve_port, auth)):
                    cell = measure(port, path, c, args.seconds, bodies[label], headers=headers)
                    rows.append({"model": label, "server": server, **cell})
    finally:
        if handle is not None:
            handle.stop(timeout_s=30)
        bare.terminate()
        bare.wait(timeout=30)
    startup_s = time_to_first_answer(store, refs[which[0]]) if args.startup else None
    tmp.cleanup()

    def cell(model: str, server: str, c: int) -> dict[str, Any]:
        return next(
            r for r in rows if r["model"] == model and r["server"] == server and r["concurrency"] == c
        )

    checks: dict[str, Any] = {}
    for label in refs:
        b1, s1 = cell(label, "bare", 1), cell(label, "raymlops", 1)
        b32, s32 = cell(label, "bare", 32), cell(label, "raymlops", 32)
        checks[label] = {
            "p50_c1_gap_ms": round(s1["p50_ms"] - b1["p50_ms"], 2),
            "p50_c1_within_2ms": s1["p50_ms"] - b1["p50_ms"] <= 2.0,
            "rps_c32_ratio": round(s32["rps"] / b32["rps"], 2) if b32["rps"] else None,
            "rps_c32_at_least_half": s32["rps"] >= 0.5 * b32["rps"],
            "p99_c32_ms": round(s32["p99_ms"], 1),
            "p99_c32_within_50ms": s32["p99_ms"] <= 50.0,
        }
    load = os.getloadavg()
    result = {
        "models": refs,
        "ingress": handle.ingress,
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in load],
        "seconds": args.seconds,
        "rows": rows,
        "checks": checks,
        "startup_s": None if startup_s is None else round(startup_s, 2),
    }
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    table = []
    for label in refs:
        for c in CONCURRENCY:
            b, s = cell(label, "bare", c), cell(label, "raymlops", c)
            table.append(
                [
                    label,
                    c,
                    f"{b['rps']:.0f}",
                    f"{s['rps']:.0f}",
                    f"{s['rps'] / b['rps']:.2f}" if b["rps"] else "-",
                    f"{b['p50_ms']:.2f}",
                    f"{s['p50_ms']:.2f}",
                    f"{b['p99_ms']:.2f}",
                    f"{s['p99_ms']:.2f}",
                    b["errors"] + s["errors"],
                ]
            )
    title = (
        f"serve load: one row per request, {args.seconds:g} s per cell, {os.cpu_count()} cores, "
        f"load average {load[0]:.1f} / {load[1]:.1f}, raymlops ingress {handle.ingress}, "
        f"{args.replicas} replica(s)"
    )
    headers = [
        "model",
        "clients",
        "bare req/s",
        "raymlops req/s",
        "ratio",
        "bare p50",
        "raymlops p50",
        "bare p99",
        "raymlops p99",
        "errors",
    ]
    from _common import print_table

    print_table(headers, table, title)
    met = {True: "met", False: "missed"}
    for label, ch in checks.items():
        print(
            f"{label}: p50 gap at 1 client {ch['p50_c1_gap_ms']} ms (<= 2: {met[ch['p50_c1_within_2ms']]}); "
            f"req/s at 32 {ch['rps_c32_ratio']}x bare (>= 0.5: {met[ch['rps_c32_at_least_half']]}), "
            f"p99 {ch['p99_c32_ms']} ms (<= 50: {met[ch['p99_c32_within_50ms']]})"
        )
    if startup_s is not None:
        print(f"raymlops serve to first answer: {startup_s:.1f} s (target <= 8: {met[startup_s <= 8.0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
