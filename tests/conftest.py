"""One Ray instance for the whole test session: ray.init costs ~10 s here, so tests share it."""

from __future__ import annotations

import os
import signal

os.environ.setdefault("RAYMLOPS_NUM_CPUS", "4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches the suite and the commands it starts, even from a background job.

    A shell without job control starts ``cmd &`` with SIGINT ignored, and the ignore is inherited
    through every fork and exec: the tests that press Ctrl-C (in this process or on a command they
    started) would then see nothing happen. Python's own default makes them mean what they test.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
