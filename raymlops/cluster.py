"""Connecting to Ray: an embedded local instance by default, or an existing cluster.

Every command goes through :func:`connect`, so sizing rules live in one place. On a small machine
Ray sees more logical CPUs than cores: Ray Data and training workers must be able to hold CPUs at
the same time, or a pipeline waits forever for a CPU that a training worker holds.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray

from raymlops.errors import ConfigError

__all__ = ["ClusterInfo", "connect", "local_num_cpus"]

_MIN_LOCAL_CPUS = 4
ADDRESS_ENV = "RAY_ADDRESS"


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
            ray.init(num_cpus=local_num_cpus(), include_dashboard=False, **kwargs)  # type: ignore[arg-type]
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
