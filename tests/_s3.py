"""A real S3-compatible server on 127.0.0.1 for object-store tests (moto's server, from the dev extra).

Object stores behave differently from local disks in the ways that matter for correctness: no
atomic rename (pyarrow's ``move`` is a copy and a delete), no conditional put, whole objects
published at once. Tests that exercise those paths run against this server through pyarrow's real
S3 client, reached with a store URI such as::

    s3://raymlops-test/<prefix>?endpoint_override=127.0.0.1:PORT&scheme=http

Use the ``s3_store_uri`` fixture from ``tests/conftest.py``; it starts one server per test session
and gives every test its own prefix.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

BUCKET = "raymlops-test"
#: Dummy credentials: the server accepts anything, and real ones must never be picked up.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class S3Server:
    """A running moto S3 server with one bucket; :meth:`stop` shuts it down and restores the env."""

    port: int
    _server: Any = field(repr=False)
    _saved_env: dict[str, str | None] = field(repr=False)

    @property
    def endpoint(self) -> str:
        """``host:port`` as pyarrow's ``endpoint_override`` wants it."""
        return f"127.0.0.1:{self.port}"

    def uri(self, prefix: str | None = None) -> str:
        """A store URI under a fresh (or the given) prefix in the test bucket."""
        prefix = prefix or f"t-{uuid.uuid4().hex[:12]}"
        return f"s3://{BUCKET}/{prefix}?endpoint_override={self.endpoint}&scheme=http"

    @classmethod
    def start(cls) -> S3Server:
        """Start the server on a free port, set dummy credentials and create the bucket."""
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        saved = {key: os.environ.get(key) for key in CREDENTIALS}
        os.environ.update(CREDENTIALS)
        port = _free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        fs.create_dir(BUCKET)
        return cls(port=port, _server=server, _saved_env=saved)

    def stop(self) -> None:
        """Shut the server down and put the environment back as it was."""
        self._server.stop()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
