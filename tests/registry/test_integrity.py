"""A version is loaded only after its sha256 sums check out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from raymlops.registry import IntegrityError, ModelStore, ModelVersion, RegistryError

WEIGHTS = b"\x00\x01weights" * 5000


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("RAYMLOPS_CACHE", str(path))
    return path


@pytest.fixture
def registered(tmp_path: Path, cache: Path) -> tuple[ModelStore, ModelVersion]:
    src = tmp_path / "src"
    (src / "prep").mkdir(parents=True)
    (src / "model.keras").write_bytes(WEIGHTS)
    (src / "prep" / "scaler.pkl").write_bytes(b"scaler")
    store = ModelStore(str(tmp_path / "store"))
    return store, store.register("digits", src, {"metrics": {"accuracy": 0.9}})


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_fetch_returns_a_verified_local_copy(
    registered: tuple[ModelStore, ModelVersion], cache: Path
) -> None:
    store, _ = registered
    mv, local = store.fetch("digits:1")

    assert local.is_relative_to(cache)
    assert (local / "model.keras").read_bytes() == WEIGHTS
    assert (local / "prep" / "scaler.pkl").read_bytes() == b"scaler"
    assert json.loads((local / "metadata.json").read_text()) == mv.metadata
    # A second fetch reuses the copy.
    assert store.fetch("digits:1")[1] == local


def test_one_flipped_byte_in_the_store_is_refused_by_fetch(
    registered: tuple[ModelStore, ModelVersion], cache: Path
) -> None:
    store, mv = registered
    stored = Path(mv.uri) / "model.keras"
    flip_one_byte(stored)

    with pytest.raises(IntegrityError) as info:
        store.fetch("digits:1")

    message = str(info.value)
    assert "'model.keras'" in message and "digits" in message and "version 1" in message
    assert hashlib.sha256(WEIGHTS).hexdigest() in message  # expected sum
    assert hashlib.sha256(stored.read_bytes()).hexdigest() in message  # actual sum
    assert "scaler.pkl" not in message
    # Nothing half-trusted is left in the cache for a later load.
    assert not any(p.is_file() for p in cache.rglob("*"))
    with pytest.raises(IntegrityError, match="model.keras"):
        store.verify("digits:1")


def test_tampered_cache_is_detected_removed_and_refetched(
    registered: tuple[ModelStore, ModelVersion], cache: Path
) -> None:
    store, _ = registered
    _, local = store.fetch("digits:1")
    flip_one_byte(local / "prep" / "scaler.pkl")

    with pytest.raises(IntegrityError, match=r"prep/scaler\.pkl.*removed"):
        store.fetch("digits:1")
    assert not local.exists()

    # The store itself is intact, so the next fetch downloads a good copy.
    _, again = store.fetch("digits:1")
    assert again == local and (again / "prep" / "scaler.pkl").read_bytes() == b"scaler"


def test_a_store_recreated_at_the_same_uri_is_fetched_afresh_not_refused(
    registered: tuple[ModelStore, ModelVersion], cache: Path, tmp_path: Path
) -> None:
    """``rm -rf store`` and training again numbers from 1 again: the old cached digits:1 is stale."""
    import shutil

    store, _ = registered
    _, old = store.fetch("digits:1")
    shutil.rmtree(tmp_path / "store")
    src = tmp_path / "src2"
    src.mkdir()
    (src / "model.keras").write_bytes(b"new weights")
    again = ModelStore(str(tmp_path / "store"))
    mv = again.register("digits", src, {"metrics": {"accuracy": 0.95}})

    got, local = again.fetch("digits:1")
    assert local == old and got.metadata == mv.metadata
    assert (local / "model.keras").read_bytes() == b"new weights"
    assert not (local / "prep").exists()  # nothing of the old copy is left behind
    assert json.loads((local / "metadata.json").read_text())["metrics"]["accuracy"] == 0.95


def test_file_planted_in_the_cache_is_detected(
    registered: tuple[ModelStore, ModelVersion], cache: Path
) -> None:
    store, _ = registered
    _, local = store.fetch("digits:1")
    (local / "evil.pkl").write_bytes(b"cos\nsystem\n")

    with pytest.raises(IntegrityError, match=r"'evil\.pkl' is not part of the registered version"):
        store.fetch("digits:1")


def test_edited_metadata_in_the_cache_is_detected(
    registered: tuple[ModelStore, ModelVersion], cache: Path
) -> None:
    store, _ = registered
    _, local = store.fetch("digits:1")
    meta = json.loads((local / "metadata.json").read_text())
    meta["metrics"]["accuracy"] = 1.0
    (local / "metadata.json").write_text(json.dumps(meta))

    with pytest.raises(IntegrityError, match="metadata.json"):
        store.fetch("digits:1")


def test_missing_and_extra_files_in_the_store_are_named(registered: tuple[ModelStore, ModelVersion]) -> None:
    store, mv = registered
    assert store.verify("digits:1").version == 1

    (Path(mv.uri) / "prep" / "scaler.pkl").unlink()
    (Path(mv.uri) / "surprise.bin").write_bytes(b"?")

    with pytest.raises(IntegrityError) as info:
        store.verify("digits:1")
    message = str(info.value)
    assert "'prep/scaler.pkl' is missing" in message
    assert "'surprise.bin' is not part of the registered version" in message
    with pytest.raises(IntegrityError, match="prep/scaler.pkl"):
        store.fetch("digits:1")


def test_fetch_into_a_chosen_folder(registered: tuple[ModelStore, ModelVersion], tmp_path: Path) -> None:
    store, _ = registered
    dest = tmp_path / "deploy" / "model"

    mv, local = store.fetch("digits:1", dest=dest)
    assert local == dest.resolve() and (local / "model.keras").read_bytes() == WEIGHTS
    # Fetching again into the same folder verifies the existing copy instead of failing.
    assert store.fetch("digits:1", dest=dest)[1] == local

    unrelated = tmp_path / "my-notes"
    unrelated.mkdir()
    (unrelated / "todo.txt").write_text("keep me")
    with pytest.raises(RegistryError, match="not empty"):
        store.fetch("digits:1", dest=unrelated)
    assert (unrelated / "todo.txt").read_text() == "keep me"
