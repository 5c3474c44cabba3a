"""raymlops.storage: URIs to filesystems, and the claim and lease-lock protocol on local disk and S3."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from raymlops import storage
from raymlops.errors import ConflictError


def test_resolve_plain_paths_file_uris_and_s3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_server
) -> None:
    monkeypatch.chdir(tmp_path)
    fs, path = storage.resolve("rel/store/")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "rel" / "store")
    fs, path = storage.resolve(f"file://{tmp_path}/x/")
    assert isinstance(fs, pafs.LocalFileSystem) and path == f"{tmp_path}/x"

    uri = s3_server.uri("prefix/sub")
    fs, path = storage.resolve(uri)
    assert fs.type_name == "s3" and path == "raymlops-test/prefix/sub"
    with fs.open_output_stream(storage.join(path, "hello.txt")) as out:  # the endpoint came from the query
        out.write(b"hi")
    assert fs.get_file_info(f"{path}/hello.txt").size == 2


def test_is_local_and_join() -> None:
    assert storage.is_local("/data/store") and storage.is_local("relative") and storage.is_local("file:///x")
    assert not storage.is_local("s3://bucket/x") and not storage.is_local("gs://bucket/x")
    assert storage.join("s3://b/store?endpoint_override=h:1&scheme=http", "models", "m") == (
        "s3://b/store/models/m?endpoint_override=h:1&scheme=http"
    )
    assert storage.join("/data/store/", "models", "m") == "/data/store/models/m"
    assert storage.join("file:///data", "a") == "file:///data/a"


@pytest.fixture
def lock_place(store_uri: str) -> tuple[pafs.FileSystem, str]:
    fs, root = storage.resolve(store_uri)
    return fs, storage.join(root, "locks", "out")


def test_try_claim_has_exactly_one_winner(lock_place: tuple[pafs.FileSystem, str]) -> None:
    fs, folder = lock_place
    first = storage.try_claim(fs, folder, owner="first")
    assert first is not None
    assert storage.try_claim(fs, folder, owner="second") is None
    # The loser removed its claim; the winner's stays and keeps the name taken.
    assert [i.path for i in fs.get_file_info(pafs.FileSelector(folder))] == [first]


def test_two_claims_seen_together_both_lose(lock_place: tuple[pafs.FileSystem, str]) -> None:
    """A rival's claim already there (it has not listed yet): nobody may assume it lost."""
    fs, folder = lock_place
    fs.create_dir(folder)
    with fs.open_output_stream(storage.join(folder, "rival.claim.json")) as out:
        out.write(b"{}")
    assert storage.try_claim(fs, folder) is None


def test_lease_lock_excludes_concurrent_holders(lock_place: tuple[pafs.FileSystem, str]) -> None:
    """Four threads do read-increment-write on one file under the lock: no increment is lost."""
    fs, folder = lock_place
    counter = storage.join(folder.rsplit("/", 1)[0], "counter.json")
    fs.create_dir(folder.rsplit("/", 1)[0])
    with fs.open_output_stream(counter) as out:
        out.write(b"0")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(6):
                with storage.LeaseLock(fs, folder, timeout_s=60):
                    with fs.open_input_stream(counter) as stream:
                        value = int(stream.read())
                    time.sleep(0.002)
                    with fs.open_output_stream(counter) as out:
                        out.write(str(value + 1).encode())
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    with fs.open_input_stream(counter) as stream:
        assert int(stream.read()) == 24
    assert not [i for i in fs.get_file_info(pafs.FileSelector(folder)) if i.type == pafs.FileType.File]


def test_second_writer_is_refused_with_who_holds_it(lock_place: tuple[pafs.FileSystem, str]) -> None:
    fs, folder = lock_place
    with storage.LeaseLock(fs, folder, owner="score job 1"):
        began = time.monotonic()
        with pytest.raises(ConflictError) as info, storage.LeaseLock(fs, folder, timeout_s=0):
            pass
        assert time.monotonic() - began < 5
        message = str(info.value)
        assert "score job 1" in message and f"pid {os.getpid()}" in message and folder in message
        assert info.value.http_status == 409
    with storage.LeaseLock(fs, folder, timeout_s=0) as lock:  # released: free again at once
        assert lock.held


def test_a_dead_holders_lock_is_taken_after_its_lease(tmp_path: Path) -> None:
    fs, folder = pafs.LocalFileSystem(), str(tmp_path / "lock")
    os.makedirs(folder)
    dead = Path(folder) / "crashed.claim.json"
    dead.write_text(json.dumps({"owner": "a crashed run"}))
    with pytest.raises(ConflictError, match="a crashed run"):
        storage.LeaseLock(fs, folder, lease_s=30, timeout_s=0).acquire()

    past = time.time() - 31
    os.utime(dead, (past, past))
    with storage.LeaseLock(fs, folder, lease_s=30, timeout_s=0) as lock:
        assert lock.held
    assert not dead.exists()


def test_a_dead_holders_lock_on_s3_is_taken_after_its_lease(s3_store_uri: str) -> None:
    fs, root = storage.resolve(s3_store_uri)
    folder = storage.join(root, "lock")
    fs.create_dir(folder)
    with fs.open_output_stream(storage.join(folder, "crashed.claim.json")) as out:
        out.write(b'{"owner": "a crashed run"}')
    began = time.monotonic()
    with storage.LeaseLock(fs, folder, lease_s=1, timeout_s=30) as lock:
        assert lock.held
    assert 1 <= time.monotonic() - began < 10  # S3's clock has one-second steps


def test_a_live_holder_keeps_its_lock_past_the_lease(tmp_path: Path) -> None:
    """The heartbeat refreshes the claim, so a long job is not mistaken for a dead one."""
    fs, folder = pafs.LocalFileSystem(), str(tmp_path / "lock")
    with storage.LeaseLock(fs, folder, lease_s=0.6) as holder:
        time.sleep(1.5)
        with pytest.raises(ConflictError):
            storage.LeaseLock(fs, folder, lease_s=0.6, timeout_s=0).acquire()
        assert holder.held and not holder.lost
