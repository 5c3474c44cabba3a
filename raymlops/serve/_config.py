"""Running the application locally (``raymlops serve``) and writing Serve configs (``serve config``).

The generated config is Ray Serve's own ``ServeDeploySchema``: it works with ``serve deploy`` and,
as the ``applications`` part, as a RayService's ``serveConfigV2``. It names the importable builder
``raymlops.serve.app:build_app`` with explicit ``args``, and writes the deployment options out in
full, so what runs on the cluster is what the file says.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml

from raymlops.config import ServeOptions
from raymlops.errors import ConfigError

from ._app import (
    APP_NAME,
    DEPLOYMENT_NAME,
    AppArgs,
    build_app,
    deployment_options,
    live_settings,
    resolve_serve_options,
)
from ._auth import API_KEY_ENV, key_digest
from ._ingress import controller_env, resolve_ingress

__all__ = [
    "BUILDER_IMPORT_PATH",
    "ServeHandle",
    "check_exposure",
    "is_loopback",
    "serve_config",
    "start_server",
    "write_serve_config",
]

log = logging.getLogger("raymlops.serve")

BUILDER_IMPORT_PATH = "raymlops.serve.app:build_app"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, has_key: bool, insecure: bool) -> None:
    """Refuse to serve without a key on an address other machines can reach, unless ``insecure``.

    Raises:
        ConfigError: ``host`` is not loopback, no API key is set and ``insecure`` is False.
    """
    if has_key or insecure or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to serve on {host} without an API key: anyone who can reach it could use the "
        f"models. Set {API_KEY_ENV} (clients then send 'Authorization: Bearer <key>'), bind "
        "127.0.0.1, or pass --insecure if the network in front is private by other means"
    )


def serve_config(
    models: list[str],
    *,
    store: str | None = None,
    options: ServeOptions | None = None,
    canary: list[str] | None = None,
    request_log: str | None = None,
    host: str = "0.0.0.0",
    port: int = 8000,
    insecure: bool = False,
) -> dict[str, Any]:
    """A Serve config (``ServeDeploySchema``) for the models, checked by Ray's own schema.

    The API key is never written: on the cluster, replicas read ``RAYMLOPS_API_KEY`` from their
    environment (a Kubernetes secret for a RayService), and a replica without it refuses to start
    (``require_api_key``, on unless ``insecure``). The ingress's environment variables go to the
    controller (``controller_options``) and to the replicas (their ``runtime_env``).

    Args:
        models: model references.
        store: the store URI the cluster reads (a shared one such as ``s3://`` on a real cluster).
        options: serving options; default the first model's pipeline ``serve:`` section.
        canary: ``NAME:VERSION=PERCENT`` splits.
        request_log: where sampled requests go (default ``<store>/request_logs``).
        host: the HTTP host the proxies bind on the cluster.
        port: the HTTP port.
        insecure: let replicas start without an API key (an edge private by other means).
    """
    from ray.serve.schema import ServeDeploySchema

    from raymlops.registry import resolve_store_uri

    store_uri = resolve_store_uri(store)
    args = AppArgs.model_validate(
        {
            "models": models,
            "store": store_uri,
            "options": options,
            "canary": canary or [],
            "request_log": request_log,
        }
    )
    resolved = resolve_serve_options(models, store_uri, options)
    args_out: dict[str, Any] = {"models": list(models), "store": store_uri, "options": resolved.model_dump()}
    if canary:
        args_out["canary"] = list(canary)
    if request_log:
        args_out["request_log"] = request_log
    if insecure:
        args_out["require_api_key"] = False
    deployment = {"name": DEPLOYMENT_NAME, **deployment_options(resolved, live_settings(args, resolved))}
    config: dict[str, Any] = {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": BUILDER_IMPORT_PATH,
                "args": args_out,
                "deployments": [deployment],
            }
        ],
    }
    env = controller_env(resolve_ingress(resolved.ingress), local=False, metrics=resolved.ingress_metrics)
    if env:
        config["controller_options"] = {"runtime_env": {"env_vars": env}}
    ServeDeploySchema.model_validate(config)  # fail here, not on the cluster
    AppArgs.model_validate(args_out)
    return config


def write_serve_config(path: str | Path, models: list[str], **kwargs: Any) -> dict[str, Any]:
    """Write :func:`serve_config` as YAML to ``path``; returns the config."""
    config = serve_config(models, **kwargs)
    header = (
        "# Ray Serve config written by `raymlops serve config`.\n"
        "# Deploy: serve deploy THIS_FILE   |   RayService: put it under spec.serveConfigV2\n"
        f"# Auth: every replica needs {API_KEY_ENV} in its environment (it refuses to start without).\n"
    )
    Path(path).write_text(header + yaml.safe_dump(config, sort_keys=False))
    return config


class ServeHandle:
    """A running local application: its URL, the ingress that carries it, and how to stop it.

    Attributes:
        url: where to send requests from this machine.
        app_name: the Serve application's name.
        ingress: the resolved ingress (``haproxy``, ``direct`` or ``proxy``).
        exposed_on: the address bound (``0.0.0.0`` means every interface, not only ``url``'s).
    """

    def __init__(self, url: str, app_name: str, ingress: str = "proxy", exposed_on: str = "") -> None:
        self.url = url
        self.app_name = app_name
        self.ingress = ingress
        self.exposed_on = exposed_on

    def stop(self, shutdown: bool = True, timeout_s: float | None = None) -> bool:
        """Delete the application, or shut Serve down when ``shutdown`` (replicas drain and flush).

        Args:
            shutdown: stop Serve itself (its controller, proxies and every application), as for
                an embedded instance; otherwise only this application goes, as on a cluster.
            timeout_s: give up waiting for Serve's graceful shutdown after this long; the caller
                then stops Ray, which ends what is left. The wait runs in this thread, as a
                cancelled coroutine: a helper thread still inside Serve when Ray stops makes Ray
                exit the whole process.

        Returns:
            True when Serve finished within ``timeout_s`` (always True without one).
        """
        import asyncio

        from ray import serve

        if not shutdown:
            serve.delete(self.app_name)
            return True
        if timeout_s is None:
            serve.shutdown()
            return True

        async def bounded() -> bool:
            try:
                await asyncio.wait_for(serve.shutdown_async(), timeout_s)
            except asyncio.TimeoutError:
                return False
            return True

        return asyncio.run(bounded())


def start_server(
    models: list[str],
    *,
    store: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    options: ServeOptions | None = None,
    canary: list[str] | None = None,
    request_log: str | None = None,
    poll_interval_s: float = 2.0,
    request_log_flush_s: float | None = None,
    address: str | None = None,
    api_key: str | None = None,
    max_body_bytes: int | None = None,
    insecure: bool = False,
) -> ServeHandle:
    """Start Serve on ``host:port`` and run the application; returns once replicas are ready.

    Args:
        models: model references.
        store: store URI.
        host: address to bind; 127.0.0.1 unless the caller decides to expose it.
        port: HTTP port.
        options: serving options (default: the first model's pipeline ``serve:`` section).
        canary: ``NAME:VERSION=PERCENT`` splits.
        request_log: where sampled requests go.
        poll_interval_s: how often replicas look for alias changes.
        request_log_flush_s: how often replicas write the sampled request log.
        address: Ray address (default: ``$RAY_ADDRESS``, else embedded local Ray).
        api_key: require this bearer key; default ``$RAYMLOPS_API_KEY``. Only its sha256 reaches Ray.
        max_body_bytes: the largest request body accepted.
        insecure: serve without a key on a non-loopback ``host`` (refused otherwise).

    Raises:
        ConfigError: no API key and ``host`` is not loopback (see :func:`check_exposure`), or the
            ingress asked for is not available.
    """
    import ray
    from ray import serve

    from raymlops.cluster import connect

    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    check_exposure(host, bool(key), insecure)
    ingress = resolve_ingress((options or ServeOptions()).ingress)
    if not ray.is_initialized():
        connect(address)
    args: dict[str, Any] = {
        "models": list(models),
        "store": store,
        "options": options.model_dump() if options is not None else None,
        "canary": list(canary or []),
        "request_log": request_log,
        "poll_interval_s": poll_interval_s,
        "api_key_sha256": key_digest(key) if key else None,
        # an open edge was allowed above (loopback or --insecure): the replicas may start keyless
        "require_api_key": bool(key),
    }
    if max_body_bytes is not None:
        args["max_body_bytes"] = max_body_bytes
    if request_log_flush_s is not None:
        args["request_log_flush_s"] = request_log_flush_s
    app = build_app(args)
    env = controller_env(ingress, local=True, metrics=(options or ServeOptions()).ingress_metrics)
    serve.start(
        http_options={"host": host, "port": port},
        controller_options={"runtime_env": {"env_vars": env}} if env else None,
    )
    started = time.monotonic()
    serve.run(app, name=APP_NAME, route_prefix="/")
    log.info("application %s ready in %.1f s (ingress %s)", APP_NAME, time.monotonic() - started, ingress)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return ServeHandle(f"http://{shown}:{port}", APP_NAME, ingress=ingress, exposed_on=host)
