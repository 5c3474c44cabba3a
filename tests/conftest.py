"""One Ray instance for the whole test session: ray.init costs ~10 s here, so tests share it."""

from __future__ import annotations

import os

os.environ.setdefault("RAYMLOPS_NUM_CPUS", "4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """The embedded local Ray every Ray-using test shares (started on first use)."""
    import ray

    from raymlops.cluster import connect

    info = connect()
    yield info
    if ray.is_initialized():
        ray.shutdown()
