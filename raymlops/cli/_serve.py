"""`raymlops serve` and `raymlops serve config`: online serving."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from raymlops._console import command_session, err_console, raise_terminated

from ._common import AddressOpt, StoreOpt, VerboseOpt, fail, guard, quiet_tensorflow


def serve_cmd(
    refs: Annotated[
        list[str],
        typer.Argument(help="NAME, NAME:VERSION or NAME@ALIAS; or: config REF...", metavar="REF..."),
    ],
    host: Annotated[
        str | None, typer.Option("--host", help="Bind address (default 127.0.0.1; `serve config`: 0.0.0.0)")
    ] = None,
    port: Annotated[int, typer.Option("--port", help="HTTP port")] = 8000,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="`serve config`: the file to write")
    ] = None,
    store: StoreOpt = None,
    address: AddressOpt = None,
    pipeline: Annotated[
        Path | None, typer.Option("--pipeline", help="Take options from this pipeline file's serve: section")
    ] = None,
    canary: Annotated[
        list[str] | None,
        typer.Option("--canary", help="NAME:VERSION=PERCENT of unversioned traffic (repeatable)"),
    ] = None,
    min_replicas: Annotated[int | None, typer.Option("--min-replicas")] = None,
    max_replicas: Annotated[int | None, typer.Option("--max-replicas")] = None,
    target_ongoing_requests: Annotated[float | None, typer.Option("--target-ongoing-requests")] = None,
    max_ongoing_requests: Annotated[int | None, typer.Option("--max-ongoing-requests")] = None,
    max_batch_size: Annotated[int | None, typer.Option("--max-batch-size")] = None,
    batch_wait_timeout_s: Annotated[float | None, typer.Option("--batch-wait-timeout-s")] = None,
    num_cpus: Annotated[float | None, typer.Option("--num-cpus", help="CPUs per replica")] = None,
    request_log_sample_rate: Annotated[float | None, typer.Option("--request-log-sample-rate")] = None,
    request_log: Annotated[
        str | None,
        typer.Option("--request-log", help="Where sampled requests go (default <store>/request_logs)"),
    ] = None,
    ingress: Annotated[
        str | None,
        typer.Option(
            "--ingress",
            help="How HTTP reaches the replicas: auto (HAProxy when installed), haproxy, direct, proxy",
        ),
    ] = None,
    ingress_metrics: Annotated[
        bool | None,
        typer.Option(
            "--ingress-metrics/--no-ingress-metrics",
            help="Also export Serve's per-request HTTP metrics from HAProxy (costs ~25% of a core "
            "at 3,000 req/s; raymlops's per-model metrics are exported either way)",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Serve without an API key on a non-loopback address (refused otherwise)"
        ),
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Serve models over HTTP (TF Serving REST and Open Inference Protocol v2) until Ctrl-C.

    Options: --pipeline's serve: section, else the one recorded with the first model, plus any flag
    given. A promotion (`raymlops models promote`) reaches the running server without downtime.
    """
    from raymlops.config import load_pipeline
    from raymlops.registry import ModelStore
    from raymlops.serve._app import parse_canary, resolve_serve_options

    config_mode = bool(refs) and refs[0] == "config"
    models = refs[1:] if config_mode else refs
    if not models:
        fail("give at least one model: raymlops serve REF... (or raymlops serve config REF... -o FILE)")
    if config_mode and output is None:
        fail("serve config needs -o FILE")
    if not config_mode and output is not None:
        fail("-o is for `raymlops serve config REF... -o FILE`")
    st = guard(ModelStore, store)
    for ref in models:
        guard(st.get, ref)
    for text in canary or []:
        name, spec = guard(parse_canary, text)
        guard(st.get, f"{name}:{spec.version}")
    base = guard(load_pipeline, pipeline).serve if pipeline else None
    overrides = {
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": target_ongoing_requests,
        "max_ongoing_requests": max_ongoing_requests,
        "max_batch_size": max_batch_size,
        "batch_wait_timeout_s": batch_wait_timeout_s,
        "num_cpus": num_cpus,
        "request_log_sample_rate": request_log_sample_rate,
        "ingress": ingress,
        "ingress_metrics": ingress_metrics,
    }
    options = guard(resolve_serve_options, models, st.uri, base, overrides)
    if config_mode:
        from raymlops.serve import write_serve_config

        assert output is not None
        kwargs = {"store": st.uri, "options": options, "canary": canary, "request_log": request_log}
        guard(
            write_serve_config, output, models, host=host or "0.0.0.0", port=port, insecure=insecure, **kwargs
        )
        err_console.print(f"wrote {output}: serve deploy {output}  (or spec.serveConfigV2 of a RayService)")
        return
    from raymlops.serve import API_KEY_ENV
    from raymlops.serve._config import check_exposure

    bind = host or "127.0.0.1"
    guard(check_exposure, bind, bool(os.environ.get(API_KEY_ENV)), insecure)
    with command_session("serve", store=st.uri, verbose=verbose, view=False):  # [console] logs, no leftovers
        _serve_until_interrupted(
            models, st.uri, bind, port, options, canary, request_log, address, insecure=insecure
        )


_GRACEFUL_STOP_S = 4.0


def _stop(handle: Any, embedded: bool) -> None:
    """[console] Serve's graceful shutdown (replicas flush the request log), bounded for an embedded
    Ray: the command's session then stops the instance and ends what is left of it, so that
    SIGTERM or Ctrl-C stops `raymlops serve` within 10 s. On a cluster only the application goes."""
    import logging
    import time

    started = time.monotonic()
    finished = handle.stop(shutdown=embedded, timeout_s=_GRACEFUL_STOP_S)
    logging.getLogger("raymlops").info(
        "serve stop: %.1f s%s", time.monotonic() - started, "" if finished else " (bound reached)"
    )


def _serve_until_interrupted(
    models: list[str],
    store: str,
    host: str,
    port: int,
    options: Any,
    canary: list[str] | None,
    request_log: str | None,
    address: str | None,
    insecure: bool = False,
) -> None:
    import signal
    import time

    from raymlops.serve import API_KEY_ENV, start_server

    quiet_tensorflow()
    embedded = not (address or os.environ.get("RAY_ADDRESS"))
    handle = None
    try:
        handle = guard(
            start_server,
            models,
            store=store,
            host=host,
            port=port,
            options=options,
            canary=canary,
            request_log=request_log,
            address=address,
            insecure=insecure,
        )
        # Ray and Serve install their own SIGTERM handlers while they start (ray.init's exits 15):
        # from here on a container stop shuts Serve down like Ctrl-C and the session exits 143.
        signal.signal(signal.SIGTERM, raise_terminated)
        auth = "bearer key required" if os.environ.get(API_KEY_ENV) else f"open ({API_KEY_ENV} unset)"
        where = " (bound on every interface)" if host in ("0.0.0.0", "::") else ""
        err_console.print(
            f"serving {', '.join(models)} at {handle.url}{where}   auth: {auth}",
            highlight=False,
            soft_wrap=True,  # the URL stays whole, to copy and to grep
        )
        err_console.print(
            "  TF Serving: POST /v1/models/NAME:predict   OIP v2: POST /v2/models/NAME/infer   "
            f"replicas {options.min_replicas}-{options.max_replicas}, batch {options.max_batch_size}, "
            f"ingress {handle.ingress}   Ctrl-C stops",
            highlight=False,
            soft_wrap=True,
        )
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        err_console.print("stopping")
        raise  # [console] the session ends what is left of Ray and exits 130 (Ctrl-C) or 143 (SIGTERM)
    finally:
        if handle is not None:
            _stop(handle, embedded)
        elif embedded:
            import ray

            if ray.is_initialized():
                from ray import serve

                serve.shutdown()
