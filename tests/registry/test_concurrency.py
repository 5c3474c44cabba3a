"""Several writer processes on one store, on a local disk and on a real S3 server (no atomic rename)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import raymlops
import raymlops.registry._store as store_module
from raymlops import storage
from raymlops.errors import ConflictError
from raymlops.registry import ModelNotFoundError, ModelStore, RegistryConflictError
from tests.registry.conftest import make_model

WORKER = Path(__file__).with_name("_worker.py")
REPO = Path(raymlops.__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def spawn(**args: Any) -> subprocess.Popen[str]:
    """Start one writer process running ``_worker.py`` with these arguments."""
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def results(procs: list[subprocess.Popen[str]], timeout: float = 240) -> list[Any]:
    """Wait for every writer; each must exit 0 and print its JSON result last."""
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"writer failed ({proc.returncode}):\n{stderr[-4000:]}"
        out.append(json.loads(stdout.strip().splitlines()[-1])["result"])
    return out


def seed(store: ModelStore, tmp_path: Path, name: str, count: int) -> None:
    for i in range(count):
        store.register(name, make_model(tmp_path / f"seed-{name}-{i}", {"f": f"seed{i}".encode()}), {})


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("writers", "each"), [(4, 6)])
def test_concurrent_writers_get_distinct_versions_that_all_verify(
    store_uri: str, writers: int, each: int
) -> None:
    start_at = time.time() + 2.0  # all processes imported and waiting before the first write
    procs = [
        spawn(action="register", uri=store_uri, name="m", count=each, writer=f"w{w}", start_at=start_at)
        for w in range(writers)
    ]
    done = results(procs)

    mine = [(f"w{w}", entry) for w, entries in enumerate(done) for entry in entries]
    numbers = [entry["version"] for _, entry in mine]
    assert len(numbers) == writers * each
    assert len(set(numbers)) == len(numbers), f"two writers got the same version: {sorted(numbers)}"
    store = ModelStore(store_uri)
    listed = [v.version for v in store.list_versions("m")]
    assert sorted(numbers) == listed  # nothing lost, nothing extra
    for writer, entry in mine:
        mv = store.verify(f"m:{entry['version']}")
        assert mv.metadata["writer"] == writer and mv.metadata["i"] == entry["i"]
        assert mv.files["model.bin"] == entry["sha256"]  # each version holds its own writer's bytes


@pytest.mark.timeout(300)
def test_concurrent_alias_updates_all_land(store_uri: str, tmp_path: Path) -> None:
    store = ModelStore(store_uri)
    seed(store, tmp_path, "m", 3)
    start_at = time.time() + 2.0
    procs = [
        spawn(
            action="aliases",
            uri=store_uri,
            name="m",
            writer=w,
            shared=shared,
            count=8,
            versions=3,
            start_at=start_at,
        )
        for w, shared in (("a", "champion"), ("b", "challenger"))
    ]
    written = results(procs)

    final = store.aliases("m")
    assert {"champion", "challenger"} <= set(final)
    assert set(written[0]) | set(written[1]) <= set(final)  # not one update was lost
    assert len(final) == 2 + 16


@pytest.mark.timeout(300)
def test_compare_and_swap_counter_across_processes(tmp_path: Path) -> None:
    """Two processes each move an alias up 6 times by CAS: exactly 12 moves land, none is lost."""
    store = ModelStore(str(tmp_path / "store"))
    seed(store, tmp_path, "m", 13)
    store.set_alias("m", "counter", 1)
    start_at = time.time() + 2.0
    procs = [spawn(action="increment", uri=store.uri, name="m", count=6, start_at=start_at) for _ in range(2)]
    results(procs)
    assert store.aliases("m")["counter"] == 13


def test_stale_expected_is_refused_with_a_clear_conflict(store_uri: str, tmp_path: Path) -> None:
    store = ModelStore(store_uri)
    seed(store, tmp_path, "m", 3)
    store.set_alias("m", "champion", 1, expected=None)  # unset -> set: allowed

    seen = store.aliases("m")["champion"]
    store.set_alias("m", "champion", 2)  # someone else promotes meanwhile
    with pytest.raises(RegistryConflictError) as info:
        store.set_alias("m", "champion", 3, expected=seen)
    message = str(info.value)
    assert "'champion'" in message and "'m'" in message and "points at version 2" in message
    assert "expected it at version 1" in message and "retry" in message
    assert isinstance(info.value, ConflictError) and info.value.http_status == 409

    with pytest.raises(RegistryConflictError, match="expected it unset"):
        store.set_alias("m", "champion", 3, expected=None)
    with pytest.raises(RegistryConflictError, match="expected it at version 1"):
        store.remove_alias("m", "champion", expected=1)
    assert store.aliases("m") == {"champion": 2}
    store.set_alias("m", "champion", 3, expected=2)
    assert store.aliases("m") == {"champion": 3}


def test_check_runs_under_the_lock_and_can_abort(store_uri: str, tmp_path: Path) -> None:
    store = ModelStore(store_uri)
    seed(store, tmp_path, "m", 2)
    store.set_alias("m", "champion", 1)
    seen: list[dict[str, int]] = []

    class GateRefused(Exception):
        pass

    def regate(current: dict[str, int]) -> None:
        seen.append(current)
        raise GateRefused("version 2 no longer beats the champion")

    with pytest.raises(GateRefused):
        store.set_alias("m", "champion", 2, check=regate)
    assert seen == [{"champion": 1}]
    assert store.aliases("m") == {"champion": 1}
    # The lock was released on the way out: the next update does not wait for a lease.
    began = time.monotonic()
    store.set_alias("m", "champion", 2, check=seen.append)
    assert time.monotonic() - began < 5
    assert store.aliases("m") == {"champion": 2} and seen[-1] == {"champion": 1}


@pytest.mark.timeout(120)
def test_writer_killed_mid_publish_leaves_nothing_visible_and_blocks_nobody(
    store_uri: str, tmp_path: Path
) -> None:
    store = ModelStore(store_uri)
    seed(store, tmp_path, "m", 1)
    src = make_model(tmp_path / "doomed", {"a.bin": b"a" * 5000, "b.bin": b"b", "sub/c": b"c"})
    proc = spawn(action="die_mid_publish", uri=store_uri, name="m", src=str(src))
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    # Version 2 was claimed and half moved in, then the writer died: it is not a version.
    assert [v.version for v in store.list_versions("m")] == [1]
    with pytest.raises(ModelNotFoundError, match="no version 2"):
        store.get("m:2")
    # The next writer is not blocked and does not reuse the dead writer's number or files.
    mv = store.register("m", make_model(tmp_path / "next", {"f": b"next"}), {})
    assert mv.version == 3
    assert [v.version for v in store.list_versions("m")] == [1, 3]
    store.verify("m:3")
    store.verify("m:1")


def test_a_claim_left_behind_only_makes_its_number_unused(store_uri: str, tmp_path: Path) -> None:
    """A writer that died right after claiming version 2 (or lost the race and could not clean up)."""
    store = ModelStore(store_uri)
    seed(store, tmp_path, "m", 1)
    fs, root = storage.resolve(store.uri)
    claim = storage.join(root, "models", "m", ".claims", "2", "dead-writer.claim.json")
    fs.create_dir(claim.rsplit("/", 1)[0])
    with fs.open_output_stream(claim) as out:
        out.write(b'{"owner": "crashed"}')

    assert store.register("m", make_model(tmp_path / "b", {"f": b"b"}), {}).version == 3
    assert [v.version for v in store.list_versions("m")] == [1, 3]


def test_failed_writer_never_deletes_another_writers_version(
    store_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old bug: two writers took one number and the one that failed removed the other's folder."""
    store = ModelStore(store_uri)
    rival = ModelStore(store_uri)
    seed(store, tmp_path, "m", 1)
    from raymlops.registry import _publish

    real_numbers = _publish.claimed_numbers
    real_move = _publish._move_in

    def stale_view(fs: Any, model_path: str) -> list[int]:
        # My first look happens just before the rival publishes version 2.
        seen = real_numbers(fs, model_path)
        monkeypatch.setattr(_publish, "claimed_numbers", real_numbers)
        monkeypatch.setattr(_publish, "_move_in", real_move)
        rival.register("m", make_model(tmp_path / "rival", {"f": b"rival"}), {})
        monkeypatch.setattr(_publish, "_move_in", fail_midway)
        return seen

    def fail_midway(fs: Any, staging: str, target: str, rels: list[str], moved: list[str]) -> None:
        real_move(fs, staging, target, rels[:1], moved)  # my first file lands, then the network fails
        raise OSError("connection reset while copying")

    monkeypatch.setattr(_publish, "claimed_numbers", stale_view)
    monkeypatch.setattr(_publish, "_move_in", fail_midway)
    with pytest.raises(OSError, match="connection reset"):
        store.register("m", make_model(tmp_path / "mine", {"f": b"mine", "g": b"g"}), {})

    assert [v.version for v in store.list_versions("m")] == [1, 2]
    rival_version = store.verify("m:2")  # intact: same files, same sums
    assert rival_version.files["f"] == hashlib.sha256(b"rival").hexdigest()
    with pytest.raises(ModelNotFoundError):
        store.get("m:3")  # my failed attempt took 3 and left nothing visible


@pytest.mark.timeout(120)
def test_alias_writer_killed_holding_the_lock_blocks_others_for_one_lease_only(
    store_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(store_uri)
    seed(store, tmp_path, "m", 2)
    proc = spawn(action="die_holding_alias_lock", uri=store_uri, name="m", alias="challenger")
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and '"holding": true' in stdout

    monkeypatch.setattr(store_module, "ALIAS_LEASE_S", 2.0)
    began = time.monotonic()
    store.set_alias("m", "champion", 2)
    waited = time.monotonic() - began
    assert 1.0 <= waited < 15, waited  # it waited for the dead holder's lease, then took over
    assert store.aliases("m") == {"champion": 2}  # the dead writer's update never landed
