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


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on 127.0.0.1 for the whole session; see tests/_s3.py."""
    pytest.importorskip("moto.server", reason="moto[server] (the dev extra) runs the S3 tests")
    from tests._s3 import S3Server

    server = S3Server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_store_uri(s3_server) -> str:
    """A fresh, empty store URI on the session's S3 server (``s3://bucket/prefix?endpoint_override=...``)."""
    return s3_server.uri()
