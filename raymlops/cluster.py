"""Connecting to Ray: an embedded local instance by default, or an existing cluster.

Every command goes through :func:`connect`, so sizing rules live in one place. On a small machine
Ray sees more logical CPUs than cores: Ray Data and training workers must be able to hold CPUs at
the same time, or a pipeline waits forever for a CPU that a training worker holds.

An embedded instance belongs to the command that started it: :func:`connect` marks it with an
environment variable that every process of the instance inherits (GCS, raylet, workers, Train
controllers), and :func:`shutdown` stops Ray and then ends any process that still carries the mark,
so nothing is left running after the command, whatever way it ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray

from raymlops.errors import ConfigError

__all__ = [
    "ClusterInfo",
    "MARKER_ENV",
    "connect",
    "connect_hooks",
    "local_num_cpus",
    "marked_processes",
    "shutdown",
    "sweep",
]

log = logging.getLogger("raymlops")

_MIN_LOCAL_CPUS = 4
ADDRESS_ENV = "RAY_ADDRESS"
MARKER_ENV = "RAYMLOPS_RAY_OWNER"
"""Set in the environment of every process of an embedded Ray instance: ``<driver pid>-<token>``."""

connect_hooks: list[Callable[[], None]] = []
"""Called after this process starts or joins Ray (the console re-installs its signal handlers and
log routing there, since ``ray.init`` replaces them)."""

_owned: str | None = None  # the marker of the embedded instance this process started
_saved_marker: str | None = None


@dataclass(frozen=True)
class ClusterInfo:
    address: str | None
    embedded: bool
    cpus: float
    gpus: float
    nodes: int


def local_num_cpus() -> int:
    """Logical CPUs for embedded Ray: twice the cores, at least 4 (overridable by RAYMLOPS_NUM_CPUS)."""
    env = os.environ.get("RAYMLOPS_NUM_CPUS")
    if env:
        return int(env)
    return max(_MIN_LOCAL_CPUS, 2 * (os.cpu_count() or 1))


def connect(address: str | None = None, *, quiet: bool = True) -> ClusterInfo:
    """Connect once per process; later calls return the current cluster's facts.

    Args:
        address: a Ray address (``ray://``, ``HOST:PORT``, ``auto``); default ``$RAY_ADDRESS``,
            else start an embedded local Ray sized by :func:`local_num_cpus`.
        quiet: keep Ray's own log lines off the terminal (they go to the session's log files).
    """
    if not ray.is_initialized():
        address = address or os.environ.get(ADDRESS_ENV) or None
        if address and address.startswith("http"):
            raise ConfigError(
                f"{address} is a dashboard/jobs address; use `raymlops submit` for it, "
                "or give the GCS address (HOST:6379) or `auto` to run on the cluster directly"
            )
        kwargs: dict[str, object] = {
            "ignore_reinit_error": True,
            "logging_level": logging.WARNING if quiet else logging.INFO,
            "log_to_driver": True,
        }
        if address:
            ray.init(address=address, **kwargs)  # type: ignore[arg-type]
        else:
            _start_embedded(kwargs)
        for hook in connect_hooks:
            hook()
    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    ctx = ray.get_runtime_context()
    return ClusterInfo(
        address=getattr(ctx, "gcs_address", None),
        embedded=not (address or os.environ.get(ADDRESS_ENV)),
        cpus=float(resources.get("CPU", 0)),
        gpus=float(resources.get("GPU", 0)),
        nodes=len(nodes),
    )


def _drop_token_enabled_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Token authentication is enabled")


def _start_embedded(kwargs: dict[str, object]) -> None:
    """``ray.init`` a local instance whose every process carries this process's marker."""
    global _owned, _saved_marker
    marker = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    _saved_marker = os.environ.get(MARKER_ENV)
    os.environ[MARKER_ENV] = marker  # inherited by GCS and raylet, and by the workers they start
    _owned = marker
    # Ray turns token authentication on for a new local instance and warns that it did, on every
    # command's console; the instance is this process's own, so that line tells a user nothing.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        _drop_token_enabled_notice
    )
    try:
        ray.init(num_cpus=local_num_cpus(), include_dashboard=False, **kwargs)  # type: ignore[arg-type]
    except BaseException:
        shutdown()
        raise


def owns_instance() -> bool:
    """Whether this process started the Ray instance it is connected to."""
    return _owned is not None


def shutdown() -> list[int]:
    """Stop Ray if this process started it (else just disconnect) and end what is left of it.

    Returns:
        The pids that were still running after ``ray.shutdown`` and had to be ended.
    """
    global _owned
    started = time.monotonic()
    if ray.is_initialized():
        with contextlib.suppress(Exception):
            ray.shutdown()
    log.info("ray.shutdown took %.1f s", time.monotonic() - started)
    marker, _owned = _owned, None
    if marker is None:
        return []
    if _saved_marker is None:
        os.environ.pop(MARKER_ENV, None)
    else:
        os.environ[MARKER_ENV] = _saved_marker
    ended = sweep(marker)
    if ended:
        log.info("ended %d leftover Ray process(es): %s", len(ended), ended)
    return ended


def marked_processes(name: str, value: str) -> list[int]:
    """Pids of the processes (other than this one) whose environment has ``name=value``.

    Reads ``/proc/<pid>/environ`` (Linux); elsewhere it finds nothing, and ``ray.shutdown`` alone
    does the work.
    """
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if wanted in environ.split(b"\0"):
            found.append(pid)
    return found


def sweep(marker: str, *, grace_s: float = 3.0) -> list[int]:
    """End every process carrying ``marker``: SIGTERM, then SIGKILL after ``grace_s``."""
    pids = marked_processes(MARKER_ENV, marker)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _running(p)]
    for pid in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return pids


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed child of ours stays a zombie until reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
