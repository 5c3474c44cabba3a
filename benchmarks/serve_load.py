"""Closed-loop HTTP load: `raymlops serve` against a bare FastAPI+uvicorn process, same model, same run.

Both servers answer ``POST /v1/models/digits:predict`` with one 64-feature row per request, through
the same parsing and ModelBundle scoring code; the bare one scores each request on its own, in one
uvicorn process. raymlops serve runs once with dynamic batching (``@serve.batch``) and once without
(batch size 1), on one replica. Each of C client connections sends a request, waits for the answer,
and sends the next (closed loop), at C = 1, 8 and 32. The client is a minimal asyncio HTTP/1.1
keep-alive loop so that it takes as little of the machine's CPU as possible from the servers.

Targets: p50 at concurrency 1 within 5 ms of bare; req/s at concurrency 32 at least bare's (batching).

    python benchmarks/serve_load.py [--store URI --model REF] [--seconds 3] [--rounds 2] [--json]
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
ROW = [float((i * 7) % 17) for i in range(64)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- the bare baseline ----------------------------------------------------------------------------
def run_bare(store: str, model: str, port: int) -> None:
    """A plain FastAPI app in this process: parse, check, score each request on its own."""
    import uvicorn
    from fastapi import FastAPI, Request, Response
    from raymlops.bundle import ModelBundle

    from raymlops.serve._protocols import (
        ClientError,
        encode_json,
        format_tf_predict,
        parse_json,
        parse_tf_predict,
    )
    from raymlops.serve._scoring import score_batch

    bundle = ModelBundle.load(model, store)
    features = bundle.schema.features
    app = FastAPI()

    async def predict(request: Request) -> Response:
        try:
            columns = parse_tf_predict(parse_json(await request.body()), features)
            outcome = score_batch(bundle, [columns])[0]
            if outcome.error is not None or outcome.labels is None:
                raise ClientError(400, outcome.error or "no prediction")
            body = encode_json(format_tf_predict(columns.columnar, outcome.labels, outcome.probabilities))
            return Response(body, media_type="application/json")
        except ClientError as err:
            return Response(
                encode_json({"error": err.message}), status_code=err.status, media_type="application/json"
            )

    async def ready(request: Request) -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    # Starlette-style routes: FastAPI cannot resolve the postponed annotations of these local functions.
    app.router.add_route(f"/v1/models/{bundle.name}:predict", predict, methods=["POST"])
    app.router.add_route("/ready", ready, methods=["GET"])

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


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


def measure(port: int, path: str, concurrency: int, seconds: float, warmup_s: float = 1.0) -> dict[str, Any]:
    """Closed-loop load at ``concurrency`` for ``seconds`` after a warm-up; req/s and percentiles."""
    body = json.dumps({"instances": [ROW]}).encode()
    request = _request_bytes(path, body)

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


def _wait_http(port: int, path: str, timeout_s: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"nothing answered on port {port} within {timeout_s} s")


# ---- the run ----------------------------------------------------------------------------------------
def train_model(store: str) -> str:
    """The demo model (pipelines/digits.yaml, 200 trees, ONNX fast path when available), one trial."""
    from raymlops._console import json_stdout
    from raymlops.config import load_pipeline
    from raymlops.pipeline import run_pipeline

    cfg = load_pipeline(ROOT / "pipelines" / "digits.yaml")
    cfg.tune.num_samples = 1
    with json_stdout(True):  # Tune's progress tables go to stderr; stdout keeps only the results
        summary = run_pipeline(cfg, store=store)
    return f"{cfg.name}:{summary['version']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="Model store (default: train the digits demo into a temporary one)")
    parser.add_argument("--model", default="digits", help="Model reference in --store")
    parser.add_argument("--seconds", type=float, default=3.0, help="Measured seconds per level and round")
    parser.add_argument("--rounds", type=int, default=2, help="Measurements per cell (the median is shown)")
    parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout")
    parser.add_argument("--bare-port", type=int, help=argparse.SUPPRESS)  # internal: run the baseline
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.bare_port:
        run_bare(args.store, args.model, args.bare_port)
        return 0

    from ray import serve

    from raymlops.cluster import connect
    from raymlops.config import ServeOptions
    from raymlops.registry import ModelStore
    from raymlops.serve import start_server

    connect()
    tmp = tempfile.TemporaryDirectory(prefix="raymlops-serve-bench-")
    store = args.store or str(Path(tmp.name) / "store")
    model = args.model if args.store else train_model(store)
    mv = ModelStore(store).get(model)
    name, ref = mv.name, mv.ref
    fast = "onnx" if (Path(ModelStore(store).fetch(ref)[1]) / "model.onnx").exists() else "sklearn"
    path = f"/v1/models/{name}:predict"

    bare_port, serve_port = free_port(), free_port()
    bare = subprocess.Popen(
        [sys.executable, __file__, "--bare-port", str(bare_port), "--store", store, "--model", ref],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # one thread per library, as Ray gives a replica with num_cpus <= 1: same footing for both
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    common = {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.5, "max_ongoing_requests": 100}
    batched = ServeOptions.model_validate({**common, "max_batch_size": 32, "batch_wait_timeout_s": 0.002})
    unbatched = ServeOptions.model_validate({**common, "max_batch_size": 1, "batch_wait_timeout_s": 0.0})
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        _wait_http(bare_port, "/ready")
        for label, options in (
            ("raymlops serve, batching", batched),
            ("raymlops serve, no batching", unbatched),
        ):
            # same init arguments, new user_config: Serve reconfigures the running replica in place
            start_server([ref], store=store, port=serve_port, options=options)
            measure(serve_port, path, 8, 1.0, warmup_s=0.5)
            # Both servers stay up and are measured in turns, so that load from other processes on
            # the machine falls on both alike; each cell is the median of its rounds.
            for c in CONCURRENCY:
                for _ in range(args.rounds):
                    for server, port in (("bare FastAPI+uvicorn", bare_port), (label, serve_port)):
                        samples.setdefault((server, c), []).append(measure(port, path, c, args.seconds))
    finally:
        serve.shutdown()
        bare.terminate()
        bare.wait(timeout=30)
        tmp.cleanup()

    rows: list[dict[str, Any]] = []
    for (server, c), runs in samples.items():
        row: dict[str, Any] = {"server": server, "concurrency": c, "rounds": len(runs)}
        for key in ("rps", "p50_ms", "p99_ms"):
            row[key] = float(np.median([r[key] for r in runs]))
        row["errors"] = sum(r["errors"] for r in runs)
        rows.append(row)
    order = ["bare FastAPI+uvicorn", "raymlops serve, batching", "raymlops serve, no batching"]
    rows.sort(key=lambda r: (order.index(r["server"]), r["concurrency"]))

    def get(server: str, c: int) -> dict[str, Any]:
        return next(r for r in rows if r["server"] == server and r["concurrency"] == c)

    bare1, serve1 = get("bare FastAPI+uvicorn", 1), get("raymlops serve, batching", 1)
    bare32, serve32 = get("bare FastAPI+uvicorn", 32), get("raymlops serve, batching", 32)
    checks = {
        "p50_c1_gap_ms": round(serve1["p50_ms"] - bare1["p50_ms"], 2),
        "p50_c1_within_5ms": serve1["p50_ms"] - bare1["p50_ms"] <= 5.0,
        "rps_c32_ratio": round(serve32["rps"] / bare32["rps"], 2) if bare32["rps"] else None,
        "rps_c32_at_least_bare": serve32["rps"] >= bare32["rps"],
    }
    result = {
        "model": ref,
        "scoring": fast,
        "cpus": os.cpu_count(),
        "seconds": args.seconds,
        "rows": rows,
        **checks,
    }
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    table = [
        [
            r["server"],
            r["concurrency"],
            f"{r['rps']:.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            r["errors"],
        ]
        for r in rows
    ]
    title = (
        f"serve load: {ref} ({fast} scoring), {os.cpu_count()} cores, "
        f"median of {args.rounds} x {args.seconds:g} s per cell"
    )
    headers = ["server", "clients", "req/s", "p50 ms", "p99 ms", "errors"]
    try:
        from _common import print_table  # shared table printing of the benchmarks

        print_table(headers, table, title)
    except ImportError:
        print(title)
        for line in [headers, *table]:
            print("  ".join(str(c) for c in line))
    met = {True: "met", False: "missed"}
    print(
        f"p50 at 1 client: raymlops {serve1['p50_ms']:.2f} ms vs bare {bare1['p50_ms']:.2f} ms "
        f"(gap {checks['p50_c1_gap_ms']} ms, target <= 5: {met[checks['p50_c1_within_5ms']]})"
    )
    print(
        f"req/s at 32 clients: raymlops {serve32['rps']:.0f} vs bare {bare32['rps']:.0f} "
        f"({checks['rps_c32_ratio']}x, target >= 1: {met[checks['rps_c32_at_least_bare']]})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
