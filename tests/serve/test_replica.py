"""The replica class on its own, in this process (no Serve in between): start-up refusals, the alias
watcher's resilience, and which versions it refuses to put online.

``ModelServer`` is what Serve runs in every replica; constructing it here runs the same code on a
real store with real trained models, and lets a test watch its downloads and its watcher thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from pathlib import Path

import pytest

from raymlops.errors import ConfigError
from raymlops.serve._app import GateRefusedError, ModelServer
from raymlops.serve._auth import key_digest

pytestmark = pytest.mark.slow


def _init(store: str, tmp: Path, **changes: object) -> dict[str, object]:
    return {
        "models": ["digits"],
        "store": store,
        "request_log": str(tmp / "request-log"),
        "max_body_bytes": 1 << 20,
        "api_key_sha256": key_digest("k"),
        **changes,
    }


@pytest.fixture
def own_store(serve_store: str, tmp_path: Path) -> str:
    """A private copy of the session's store (this test may move aliases and poison versions)."""
    store = tmp_path / "store"
    shutil.copytree(serve_store, store, ignore=shutil.ignore_patterns("request_logs"))
    return str(store)


def _register_like(store: str, ref: str, tmp: Path, **metadata: object) -> int:
    from raymlops.registry import ModelStore

    st = ModelStore(store)
    mv, path = st.fetch(ref)
    folder = tmp / f"copy-{time.monotonic_ns()}"
    shutil.copytree(path, folder, ignore=shutil.ignore_patterns("metadata.json", "signature.json"))
    reserved = {"name", "version", "created_at", "files", "package_versions"}
    kept = {k: v for k, v in mv.metadata.items() if k not in reserved}
    return st.register(mv.name, folder, {**kept, **metadata}).version


def _stop(server: ModelServer) -> None:
    server._stop.set()
    server._watcher.join(timeout=10)


@pytest.mark.parametrize("key", [None, ""])
def test_a_replica_that_must_require_a_key_and_has_none_refuses_to_start(
    own_store, tmp_path, monkeypatch, key
):
    monkeypatch.delenv("RAYMLOPS_API_KEY", raising=False)
    if key is not None:
        monkeypatch.setenv("RAYMLOPS_API_KEY", key)  # an empty key is no key: fail closed
    with pytest.raises(ConfigError, match="requires an API key"):
        ModelServer(_init(own_store, tmp_path, api_key_sha256=None))
    # the replica reads the key from its environment (a RayService Secret) when none was passed
    monkeypatch.setenv("RAYMLOPS_API_KEY", "from-a-secret")
    server = ModelServer(_init(own_store, tmp_path, api_key_sha256=None))
    try:
        assert server.auth.allows("Bearer from-a-secret") and not server.auth.allows(None)
    finally:
        _stop(server)


def test_a_request_log_flush_error_does_not_kill_the_alias_watcher(own_store, tmp_path):
    server = ModelServer(_init(own_store, tmp_path))
    try:
        settings = {"poll_interval_s": 0.05, "request_log_flush_s": 0.05, "request_log_sample_rate": 1.0}
        asyncio.run(server.reconfigure(settings))
        assert server.request_log is not None

        def broken_flush() -> list[str]:
            raise OSError("disk full")

        server.request_log.flush = broken_flush  # type: ignore[method-assign]
        time.sleep(0.6)  # several watcher iterations, each one failing to flush
        assert server._watcher.is_alive()
        server.check_health()  # Serve's probe would restart a replica whose watcher died
    finally:
        _stop(server)


def test_a_champion_that_fails_verification_is_not_downloaded_again_every_poll(
    own_store, tmp_path, monkeypatch, caplog
):
    from raymlops.registry import ModelStore
    from raymlops.registry import _store as store_module

    bad = _register_like(own_store, "digits:1", tmp_path)
    mv = ModelStore(own_store).get(f"digits:{bad}")
    version_dir = Path(own_store) / "models" / "digits" / str(bad)
    victim = next(version_dir / rel for rel in mv.files if rel.endswith((".skops", ".onnx")))
    victim.write_bytes(victim.read_bytes() + b"tampered")  # digest in metadata.json no longer matches

    downloads: list[str] = []
    real_copy = store_module._copy_version

    def counting_copy(fs, source, dest):  # type: ignore[no-untyped-def]
        downloads.append(source)
        return real_copy(fs, source, dest)

    monkeypatch.setattr(store_module, "_copy_version", counting_copy)
    server = ModelServer(_init(own_store, tmp_path))
    try:
        _stop(server)  # drive the watcher's work by hand: every call is one poll
        downloads.clear()
        ModelStore(own_store).set_alias("digits", "champion", bad)
        with caplog.at_level(logging.WARNING, logger="raymlops.serve"):
            for _ in range(5):
                server._refresh()
        assert server.slots["digits"].primary.version == 1  # still serving the good one
        assert len([d for d in downloads if d.rstrip("/").endswith(f"/{bad}")]) <= 1, downloads
        warnings = [r for r in caplog.records if "keeping version" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
    finally:
        _stop(server)


def test_a_version_its_gate_refused_is_never_served_even_when_an_alias_points_at_it(own_store, tmp_path):
    from raymlops.registry import ModelStore

    refused = _register_like(
        own_store, "digits:1", tmp_path, gate={"passed": False, "reasons": ["accuracy 0.41 < 0.5"]}
    )
    with pytest.raises(GateRefusedError, match="accuracy 0.41 < 0.5"):
        ModelServer(_init(own_store, tmp_path, models=[f"digits:{refused}"]))

    server = ModelServer(_init(own_store, tmp_path))
    try:
        _stop(server)
        ModelStore(own_store).set_alias("digits", "champion", refused)
        server._refresh()
        assert server.slots["digits"].primary.version == 1
    finally:
        _stop(server)
    with pytest.raises(GateRefusedError, match="promotion gate"):
        ModelServer(_init(own_store, tmp_path))  # a replica starting now refuses the champion itself


def test_with_trusted_keys_the_signed_gate_outcome_decides_and_cannot_be_edited(
    own_store, tmp_path, monkeypatch
):
    from raymlops.registry import ModelStore, SignatureError, write_key_pair

    private, public = write_key_pair(tmp_path / "keys")
    monkeypatch.setenv("RAYMLOPS_SIGNING_KEY", str(private))
    good = _register_like(own_store, "digits:1", tmp_path)
    refused = _register_like(own_store, "digits:1", tmp_path, gate={"passed": False, "reasons": ["worse"]})
    monkeypatch.delenv("RAYMLOPS_SIGNING_KEY")
    monkeypatch.setenv("RAYMLOPS_TRUSTED_KEYS", str(public))

    server = ModelServer(_init(own_store, tmp_path, models=[f"digits:{good}"]))
    _stop(server)
    with pytest.raises(GateRefusedError):
        ModelServer(_init(own_store, tmp_path, models=[f"digits:{refused}"]))

    # rewriting the outcome to "passed" breaks the signature: refused all the same
    meta_path = Path(own_store) / "models" / "digits" / str(refused) / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["gate"] = {"passed": True, "reasons": []}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SignatureError):
        ModelServer(_init(own_store, tmp_path, models=[f"digits:{refused}"]))
    assert ModelStore(own_store).get(f"digits:{good}").trusted
