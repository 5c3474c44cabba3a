"""Registering, listing and publishing versions on real files."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.fs as pafs
import pytest

import raymlops.registry._store as store_module
from raymlops.registry import (
    DEFAULT_STORE_ENV,
    InvalidNameError,
    InvalidRegistrationError,
    ModelNotFoundError,
    ModelStore,
    resolve_store_uri,
)


def make_model(root: Path, files: dict[str, bytes]) -> Path:
    """Write a model folder with the given relative paths and contents."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def model_dir(store: ModelStore, name: str) -> Path:
    return Path(store.uri.removeprefix("file://")) / "models" / name


def visible_entries(folder: Path) -> list[str]:
    """What a person listing the model folder sees, minus the hidden claim and lock folders."""
    return sorted(p.name for p in folder.iterdir() if p.name not in (".claims", ".locks"))


def test_register_two_versions_then_list_them(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path / "store"))
    src1 = make_model(tmp_path / "m1", {"model.keras": b"weights-1", "prep/scaler.pkl": b"scaler"})
    src2 = make_model(tmp_path / "m2", {"model.keras": b"weights-2", "prep/scaler.pkl": b"scaler"})

    v1 = store.register("digits", src1, {"metrics": {"accuracy": 0.91}})
    v2 = store.register("digits", src2, {"metrics": {"accuracy": 0.95}})

    assert (v1.version, v2.version) == (1, 2)
    listed = store.list_versions("digits")
    assert [v.version for v in listed] == [1, 2]
    assert [v.metrics["accuracy"] for v in listed] == [0.91, 0.95]
    assert store.list_models() == ["digits"]
    # Files, sub-folders included, are in the version folder the URI points at.
    assert (Path(v2.uri) / "model.keras").read_bytes() == b"weights-2"
    assert (Path(v2.uri) / "prep" / "scaler.pkl").read_bytes() == b"scaler"
    assert v2.ref == "digits:2"


def test_metadata_records_sha256_of_every_file_and_package_versions(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path / "store"))
    files = {"model.bin": os.urandom(3 * 1024 * 1024 + 17), "sub/dir/ref_stats.json": b"{}"}
    src = make_model(tmp_path / "m", files)

    before = datetime.now(timezone.utc)
    mv = store.register("churn", src, {"params": {"depth": 4}, "metrics": {"rmse": 1.5}})

    on_disk = json.loads((Path(mv.uri) / "metadata.json").read_text())
    assert on_disk == mv.metadata == store.get("churn:1").metadata
    assert on_disk["files"] == {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    assert on_disk["name"] == "churn" and on_disk["version"] == 1
    assert on_disk["params"] == {"depth": 4}
    assert mv.metrics == {"rmse": 1.5}
    versions = on_disk["package_versions"]
    for package in ("python", "pyarrow", "numpy"):
        assert versions[package]
    assert mv.created_at is not None and mv.created_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= mv.created_at <= datetime.now(timezone.utc)


def test_stored_version_does_not_change_when_the_source_folder_does(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path / "store"))
    src = make_model(tmp_path / "m", {"model.bin": b"v1"})
    mv = store.register("m", src, {})
    (src / "model.bin").write_bytes(b"changed after registering")

    assert (Path(mv.uri) / "model.bin").read_bytes() == b"v1"
    store.verify("m:1")


def test_gzip_named_files_are_stored_byte_for_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow would transparently (de)compress *.gz by default; a model file must not change."""
    monkeypatch.setenv("RAYMLOPS_CACHE", str(tmp_path / "cache"))
    store = ModelStore(str(tmp_path / "store"))
    payload = gzip.compress(b"a" * 1000)
    src = make_model(tmp_path / "m", {"table.csv.gz": payload})
    store.register("m", src, {})

    _, local = store.fetch("m:1")
    assert (local / "table.csv.gz").read_bytes() == payload


def test_failed_read_midway_leaves_no_version_and_no_staging(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path / "store"))
    store.register("digits", make_model(tmp_path / "ok", {"model.bin": b"good"}), {})
    # Files are uploaded in sorted order: two succeed, then the dangling link fails to open.
    src = make_model(tmp_path / "bad", {"a.bin": b"a" * 10_000, "b.bin": b"b"})
    (src / "z_broken").symlink_to(tmp_path / "does-not-exist")

    with pytest.raises(FileNotFoundError):
        store.register("digits", src, {})

    assert [v.version for v in store.list_versions("digits")] == [1]
    assert visible_entries(model_dir(store, "digits")) == ["1"]  # no staging folder left
    # The next successful registration is numbered as if nothing had happened.
    assert store.register("digits", make_model(tmp_path / "ok2", {"m": b"x"}), {}).version == 2


def test_ctrl_c_while_writing_metadata_leaves_no_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(str(tmp_path / "store"))
    src = make_model(tmp_path / "m", {"model.bin": b"x" * 100, "prep/p.pkl": b"p"})

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.register("digits", src, {})

    assert store.list_models() == []
    with pytest.raises(ModelNotFoundError):
        store.list_versions("digits")
    # Only the claim on version 1 is left (that number is now unused); no staging, no version folder.
    assert visible_entries(model_dir(store, "digits")) == []
    monkeypatch.undo()
    assert store.register("digits", src, {}).version == 2


def test_half_written_version_folder_is_invisible_and_its_number_is_skipped(tmp_path: Path) -> None:
    """A folder without metadata.json (e.g. a crash while publishing to an object store) is not a version."""
    store = ModelStore(str(tmp_path / "store"))
    store.register("m", make_model(tmp_path / "a", {"f": b"1"}), {})
    half = model_dir(store, "m") / "2"
    half.mkdir()
    (half / "f").write_bytes(b"partial")

    assert [v.version for v in store.list_versions("m")] == [1]
    with pytest.raises(ModelNotFoundError, match="versions: 1"):
        store.get("m:2")
    assert store.register("m", make_model(tmp_path / "b", {"f": b"3"}), {}).version == 3


def test_writer_that_loses_the_race_for_a_number_takes_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raymlops.registry import _publish

    store = ModelStore(str(tmp_path / "store"))
    rival = ModelStore(store.uri)
    store.register("m", make_model(tmp_path / "a", {"f": b"first"}), {})
    real = _publish.claimed_numbers

    def stale_then_real(fs: pafs.FileSystem, model_path: str) -> list[int]:
        # The first look at the numbers happens just before a rival takes and publishes version 2.
        seen = real(fs, model_path)
        monkeypatch.setattr(_publish, "claimed_numbers", real)
        rival.register("m", make_model(tmp_path / "r", {"f": b"rival"}), {})
        return seen

    monkeypatch.setattr(_publish, "claimed_numbers", stale_then_real)
    mine = store.register("m", make_model(tmp_path / "b", {"f": b"mine"}), {})

    assert mine.version == 3
    assert mine.metadata["version"] == 3
    assert (Path(store.get("m:2").uri) / "f").read_bytes() == b"rival"
    assert (Path(store.get("m:3").uri) / "f").read_bytes() == b"mine"
    store.verify("m:2")
    store.verify("m:3")


def test_a_legacy_folder_without_a_claim_is_never_written_into(tmp_path: Path) -> None:
    """A version written by an older raymlops (no claims) keeps its number and its files."""
    store = ModelStore(str(tmp_path / "store"))
    store.register("m", make_model(tmp_path / "a", {"f": b"1"}), {})
    # Simulate the old layout: version 2 published without a claim.
    legacy = model_dir(store, "m") / "2"
    legacy.mkdir()
    (legacy / "f").write_bytes(b"legacy")
    meta = json.loads((model_dir(store, "m") / "1" / "metadata.json").read_text())
    meta.update(version=2, files={"f": hashlib.sha256(b"legacy").hexdigest()})
    (legacy / "metadata.json").write_text(json.dumps(meta))

    assert store.register("m", make_model(tmp_path / "b", {"f": b"3"}), {}).version == 3
    assert store.verify("m:2").files == meta["files"]


def test_store_given_as_file_uri_works_like_a_plain_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYMLOPS_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "store"
    uri_store = ModelStore(f"file://{root}")
    mv = uri_store.register("digits", make_model(tmp_path / "m", {"model.bin": b"w", "s/x": b"y"}), {})
    uri_store.set_alias("digits", "champion", mv.version)

    assert mv.uri == f"file://{root}/models/digits/1"
    assert uri_store.get("digits").version == 1
    got, local = uri_store.fetch("digits")
    assert (local / "model.bin").read_bytes() == b"w" and (local / "s" / "x").read_bytes() == b"y"
    assert got.aliases == ["champion"]
    # The same folder opened as a plain path is the same store.
    path_store = ModelStore(str(root))
    assert [v.version for v in path_store.list_versions("digits")] == [1]
    assert path_store.aliases("digits") == {"champion": 1}


def test_store_on_a_filesystem_without_folder_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Object stores (s3://, gs://) cannot rename folders; publishing copies, metadata.json last."""
    monkeypatch.setenv("RAYMLOPS_CACHE", str(tmp_path / "cache"))
    fs = pafs._MockFileSystem()
    store = ModelStore("bucket/mlops", filesystem=fs)
    store.register("m", make_model(tmp_path / "a", {"model.bin": b"one", "sub/x": b"x"}), {})
    store.register("m", make_model(tmp_path / "b", {"model.bin": b"two"}), {})
    store.set_alias("m", "champion", 2)

    assert [v.version for v in store.list_versions("m")] == [1, 2]
    names = sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector("bucket/mlops/models/m")))
    assert names == [".claims", ".locks", "1", "2", "aliases.json"]  # no staging folder left behind
    mv, local = store.fetch("m")
    assert mv.version == 2 and (local / "model.bin").read_bytes() == b"two"
    store.verify("m:1")


def test_bad_registrations_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = ModelStore(str(tmp_path / "store"))
    src = make_model(tmp_path / "m", {"model.bin": b"w"})
    empty = tmp_path / "empty"
    empty.mkdir()

    with pytest.raises(InvalidNameError, match="invalid model name"):
        store.register("../escape", src, {})
    with pytest.raises(InvalidNameError, match="invalid model name"):
        store.register("m\n", src, {})
    with pytest.raises(InvalidRegistrationError, match="contains no files") as info:
        store.register("m", empty, {})
    assert info.value.http_status == 400
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.register("m", tmp_path / "nope", {})
    with pytest.raises(InvalidRegistrationError, match="'files'"):
        store.register("m", src, {"files": {}})
    for reserved in ("metadata.json", "signature.json"):
        planted = make_model(tmp_path / f"with-{reserved}", {"model.bin": b"w", reserved: b"{}"})
        with pytest.raises(InvalidRegistrationError, match=reserved):
            store.register("m", planted, {})
    with pytest.raises(TypeError, match="JSON"):
        store.register("m", src, {"when": datetime.now()})
    assert not (tmp_path / "store").exists() or store.list_models() == []


def test_resolve_store_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(DEFAULT_STORE_ENV, raising=False)
    assert resolve_store_uri() == str(tmp_path / "raymlops-store")
    monkeypatch.setenv(DEFAULT_STORE_ENV, "shared/store")
    assert resolve_store_uri() == str(tmp_path / "shared" / "store")
    assert resolve_store_uri("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert resolve_store_uri("rel") == str(tmp_path / "rel")
    assert ModelStore().uri == str(tmp_path / "shared" / "store")


def test_publishing_leaves_only_the_version_behind(store_uri: str, tmp_path: Path) -> None:
    """On S3 each file is moved in with pyarrow's copy-and-delete; the staging copies are all gone."""
    from raymlops import storage

    store = ModelStore(store_uri)
    files = {"model.bin": os.urandom(70_000), "prep/plan.json": b"{}", "deep/er/x": b"x"}
    mv = store.register("m", make_model(tmp_path / "m", files), {"note": "hello"})

    fs, root = storage.resolve(store_uri)
    model_path = storage.join(root, "models", "m")
    found = [
        info.path[len(model_path) + 1 :]
        for info in fs.get_file_info(pafs.FileSelector(model_path, recursive=True))
        if info.type == pafs.FileType.File
    ]
    assert not [p for p in found if ".staging-" in p]
    assert sorted(p for p in found if p.startswith("1/")) == sorted(
        ["1/metadata.json", "1/model.bin", "1/prep/plan.json", "1/deep/er/x"]
    )
    assert [p for p in found if p.startswith(".claims/")] == [p for p in found if p.startswith(".claims/1/")]
    assert store.verify("m:1").metadata == mv.metadata
    _, local = store.fetch("m:1")
    assert (local / "model.bin").read_bytes() == files["model.bin"]
