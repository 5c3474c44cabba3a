"""Signed versions: writers sign metadata.json (Ed25519); loaders with trusted keys refuse the rest."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raymlops import storage
from raymlops.errors import ConflictError, TrustError
from raymlops.registry import (
    SIGNING_KEY_ENV,
    TRUSTED_KEYS_ENV,
    IntegrityError,
    ModelStore,
    RegistryConflictError,
    SignatureError,
    StoreConfigError,
    write_key_pair,
)
from tests.registry.conftest import make_model

Keys = dict[str, tuple[Path, Path]]
WEIGHTS = b"\x00weights" * 4000


def register_signed(store_uri: str, keys: Keys, tmp_path: Path, name: str = "digits") -> ModelStore:
    writer = ModelStore(store_uri, signing_key=keys["good"][0])
    src = make_model(tmp_path / f"src-{name}", {"model.keras": WEIGHTS, "prep/plan.json": b"{}"})
    gate = {"passed": True, "reasons": [], "champion": None}
    writer.register(name, src, {"metrics": {"accuracy": 0.97}, "gate": gate})
    return writer


def reader(store_uri: str, keys: Keys, *labels: str) -> ModelStore:
    return ModelStore(store_uri, trusted_keys=[keys[label][1] for label in labels or ("good",)])


def rewrite(store_uri: str, rel: str, change: Any) -> None:
    """Edit one file of the stored version digits:1 in place (local or S3), as an attacker would."""
    fs, root = storage.resolve(store_uri)
    path = storage.join(root, "models", "digits", "1", rel)
    with fs.open_input_stream(path) as stream:
        data = stream.read()
    with fs.open_output_stream(path) as out:
        out.write(change(data))


def poison_metadata(data: bytes, new_weights: bytes) -> bytes:
    meta = json.loads(data)
    meta["files"]["model.keras"] = hashlib.sha256(new_weights).hexdigest()
    return json.dumps(meta).encode()


def cached_files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_key_pair_files_are_pem_private_key_owner_only(tmp_path: Path) -> None:
    private, public = write_key_pair(tmp_path / "keys")

    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    assert (
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == public.read_bytes()
    )


def test_key_pair_never_overwrites(tmp_path: Path) -> None:
    private, public = write_key_pair(tmp_path / "keys")
    before = private.read_bytes(), public.read_bytes()

    with pytest.raises(RegistryConflictError, match="refusing to overwrite") as info:
        write_key_pair(tmp_path / "keys")
    assert isinstance(info.value, ConflictError) and str(private) in str(info.value)
    assert (private.read_bytes(), public.read_bytes()) == before

    public.unlink()  # even one file left is enough to refuse, and nothing new is written
    with pytest.raises(RegistryConflictError):
        write_key_pair(tmp_path / "keys")
    assert private.read_bytes() == before[0] and not public.exists()


def test_signed_version_loads_with_its_trusted_key(store_uri: str, keys: Keys, tmp_path: Path) -> None:
    register_signed(store_uri, keys, tmp_path)
    store = reader(store_uri, keys, "other", "good")

    mv, local = store.fetch("digits:1")
    assert (local / "model.keras").read_bytes() == WEIGHTS
    assert mv.signed and mv.trusted
    public = serialization.load_pem_public_key(keys["good"][1].read_bytes())
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert mv.key_id == hashlib.sha256(raw).hexdigest()[:16]
    assert mv.gate == {"passed": True, "reasons": [], "champion": None}
    assert store.verify("digits:1").trusted
    # Listing reports the signature without checking it.
    listed = ModelStore(store_uri).list_versions("digits")[0]
    assert listed.signed and listed.key_id == mv.key_id and not listed.trusted


def test_signature_file_covers_the_canonical_metadata(tmp_path: Path, keys: Keys) -> None:
    register_signed(str(tmp_path / "store"), keys, tmp_path)
    folder = tmp_path / "store" / "models" / "digits" / "1"
    signature = json.loads((folder / "signature.json").read_text())
    metadata = json.loads((folder / "metadata.json").read_text())

    assert signature["alg"] == "ed25519" and set(signature) == {"alg", "key_id", "signature"}
    public = serialization.load_pem_public_key(keys["good"][1].read_bytes())
    canonical = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    public.verify(base64.b64decode(signature["signature"]), canonical)  # type: ignore[union-attr]
    assert metadata["files"]["model.keras"] == hashlib.sha256(WEIGHTS).hexdigest()


def test_unsigned_version_is_refused_when_keys_are_trusted(
    store_uri: str, keys: Keys, tmp_path: Path
) -> None:
    ModelStore(store_uri).register("digits", make_model(tmp_path / "src", {"m": b"w"}), {})
    ModelStore(store_uri).set_alias("digits", "champion", 1)

    # Without trusted keys nothing changes: unsigned versions load.
    mv, _ = ModelStore(store_uri).fetch("digits")
    assert not mv.signed and not mv.trusted

    store = reader(store_uri, keys)
    for call in (store.get, store.verify, store.fetch):
        with pytest.raises(SignatureError) as info:
            call("digits")
        message = str(info.value)
        assert "'digits' version 1 is not signed" in message
        assert TRUSTED_KEYS_ENV in message and SIGNING_KEY_ENV in message
    assert isinstance(info.value, TrustError) and isinstance(info.value, IntegrityError)
    assert info.value.http_status == 403


def test_signature_by_an_untrusted_key_is_refused(store_uri: str, keys: Keys, tmp_path: Path) -> None:
    writer = register_signed(store_uri, keys, tmp_path)
    signer_id = writer.list_versions("digits")[0].key_id

    with pytest.raises(SignatureError) as info:
        reader(store_uri, keys, "other").fetch("digits:1")
    message = str(info.value)
    assert f"signed by key {signer_id}, which is not trusted" in message and TRUSTED_KEYS_ENV in message
    assert not cached_files(tmp_path)


def test_tampered_metadata_is_refused(store_uri: str, keys: Keys, tmp_path: Path) -> None:
    register_signed(store_uri, keys, tmp_path)

    def better_accuracy(data: bytes) -> bytes:
        meta = json.loads(data)
        meta["metrics"]["accuracy"] = 0.999
        meta["gate"]["passed"] = True
        return json.dumps(meta).encode()

    rewrite(store_uri, "metadata.json", better_accuracy)
    with pytest.raises(SignatureError, match=r"does not match its metadata\.json"):
        reader(store_uri, keys).verify("digits:1")


class ReadRecorder(pafs.FileSystemHandler):
    """The real local filesystem, noting every file opened for reading (the test's witness)."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()
        self.opened: list[str] = []

    def get_type_name(self) -> str:
        return "recording-local"

    def equals(self, other: Any) -> bool:
        return other is self

    def get_file_info(self, paths: Any) -> Any:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: Any) -> Any:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("not in tests")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        self.opened.append(path)
        return self.fs.open_input_stream(path, compression=None)

    def open_input_file(self, path: str) -> Any:
        self.opened.append(path)
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return self.fs.open_output_stream(path, compression=None, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self.fs.open_append_stream(path, compression=None, metadata=metadata)

    def normalize_path(self, path: str) -> str:
        return path


def test_poisoned_version_is_refused_before_any_model_byte_is_read(keys: Keys, tmp_path: Path) -> None:
    """The attack of issue 15: rewrite a model file and its digest in metadata.json."""
    root = str(tmp_path / "store")
    register_signed(root, keys, tmp_path)
    register_signed(root, keys, tmp_path, name="control")
    evil = b"cos\nsystem\n(S'touch /tmp/pwned'\ntR."
    rewrite(root, "model.keras", lambda _: evil)
    rewrite(root, "metadata.json", lambda data: poison_metadata(data, evil))
    recorder = ReadRecorder()
    store = ModelStore(root, filesystem=pafs.PyFileSystem(recorder), trusted_keys=[keys["good"][1]])

    for call in (store.fetch, store.verify):
        with pytest.raises(SignatureError) as info:
            call("digits:1")
        assert "does not match its metadata.json" in str(info.value)
        assert "none of its files were read" in str(info.value)
    version_folder = str(tmp_path / "store" / "models" / "digits" / "1")
    opened = {Path(p).name for p in recorder.opened if p.startswith(version_folder)}
    assert opened == {"metadata.json", "signature.json"}, recorder.opened
    assert not cached_files(tmp_path)  # nothing of it reached the local cache

    # The witness works: a good version's model files are opened when it is fetched.
    store.fetch("control:1")
    assert any(p.endswith("control/1/model.keras") for p in recorder.opened)


def test_poisoned_version_on_s3_is_refused_and_never_cached(
    s3_store_uri: str, keys: Keys, tmp_path: Path
) -> None:
    register_signed(s3_store_uri, keys, tmp_path)
    evil = b"not the model that was signed"
    rewrite(s3_store_uri, "model.keras", lambda _: evil)
    rewrite(s3_store_uri, "metadata.json", lambda data: poison_metadata(data, evil))

    # Without trusted keys the digests match, which is exactly why sums alone are not enough.
    ModelStore(s3_store_uri).verify("digits:1")
    with pytest.raises(SignatureError, match="does not match"):
        reader(s3_store_uri, keys).fetch("digits:1")
    assert not cached_files(tmp_path)


def test_signed_version_copied_to_another_number_is_refused(keys: Keys, tmp_path: Path) -> None:
    """Replaying an old signed version (e.g. one the gate refused) under a new number fails."""
    uri = str(tmp_path / "store")
    register_signed(uri, keys, tmp_path)
    models = tmp_path / "store" / "models" / "digits"
    (models / "7").mkdir()
    for name in ("model.keras", "metadata.json", "signature.json"):
        (models / "7" / name).write_bytes((models / "1" / name).read_bytes())
    (models / "7" / "prep").mkdir()
    (models / "7" / "prep" / "plan.json").write_bytes(b"{}")

    with pytest.raises(SignatureError, match=r"holds the signed metadata of 'digits' version 1"):
        reader(uri, keys).fetch("digits:7")


def test_malformed_signature_file_is_refused(keys: Keys, tmp_path: Path) -> None:
    uri = str(tmp_path / "store")
    register_signed(uri, keys, tmp_path)
    rewrite(uri, "signature.json", lambda _: b'{"alg": "none", "key_id": "x", "signature": ""}')
    with pytest.raises(SignatureError, match="not an ed25519 signature file"):
        reader(uri, keys).get("digits:1")


def test_keys_from_the_environment(keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = str(tmp_path / "store")
    monkeypatch.setenv(SIGNING_KEY_ENV, str(keys["good"][0]))
    ModelStore(uri).register("digits", make_model(tmp_path / "src", {"m": b"w"}), {})
    monkeypatch.delenv(SIGNING_KEY_ENV)

    monkeypatch.setenv(TRUSTED_KEYS_ENV, os.pathsep.join(str(keys[k][1]) for k in ("other", "good")))
    assert ModelStore(uri).fetch("digits:1")[0].trusted
    monkeypatch.setenv(TRUSTED_KEYS_ENV, str(keys["other"][1]))
    with pytest.raises(SignatureError, match="not trusted"):
        ModelStore(uri).get("digits:1")
    # An explicit empty list turns checking off even with the variable set.
    assert not ModelStore(uri, trusted_keys=[]).get("digits:1").trusted


def test_misconfigured_keys_fail_closed(keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = str(tmp_path / "store")
    missing = tmp_path / "nope.pub.pem"
    monkeypatch.setenv(TRUSTED_KEYS_ENV, f"{keys['good'][1]}{os.pathsep}{missing}")
    with pytest.raises(StoreConfigError, match=rf"{missing}.*{TRUSTED_KEYS_ENV}"):
        ModelStore(uri)
    monkeypatch.setenv(TRUSTED_KEYS_ENV, os.pathsep)
    with pytest.raises(StoreConfigError, match="names no key file"):
        ModelStore(uri)
    monkeypatch.delenv(TRUSTED_KEYS_ENV)
    with pytest.raises(StoreConfigError, match="not a PEM public key"):
        ModelStore(uri, trusted_keys=[keys["good"][0]])  # the private key given by mistake
    with pytest.raises(StoreConfigError, match="not a PEM private key"):
        ModelStore(uri, signing_key=keys["good"][1])
    with pytest.raises(StoreConfigError, match="cannot read"):
        ModelStore(uri, signing_key=tmp_path / "absent.pem")


def test_a_failing_champion_is_not_downloaded_again_and_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import raymlops.registry._integrity as integrity
    import raymlops.registry._store as store_module

    monkeypatch.setattr(integrity, "FAILED_FETCHES", integrity.FailedFetches())
    downloads: list[str] = []
    real_copy = store_module._copy_version

    def counting_copy(fs: pafs.FileSystem, source: str, dest: Path) -> None:
        downloads.append(source)
        real_copy(fs, source, dest)

    monkeypatch.setattr(store_module, "_copy_version", counting_copy)
    store = ModelStore(str(tmp_path / "store"))
    store.register("digits", make_model(tmp_path / "src", {"model.keras": WEIGHTS}), {})
    store.set_alias("digits", "champion", 1)
    stored = tmp_path / "store" / "models" / "digits" / "1" / "model.keras"
    stored.write_bytes(b"truncated")

    with pytest.raises(IntegrityError, match="model.keras") as first:
        store.fetch("digits")
    assert "remembered" not in str(first.value)
    for _ in range(5):  # e.g. a replica polling its champion
        with pytest.raises(IntegrityError, match="remembered"):
            store.fetch("digits")
    assert len(downloads) == 1 and not cached_files(tmp_path)

    # After the time limit it is tried again (a repaired store is picked up).
    stored.write_bytes(WEIGHTS)
    integrity.FAILED_FETCHES.ttl_s = 0.0
    _, local = store.fetch("digits")
    assert len(downloads) == 2 and (local / "model.keras").read_bytes() == WEIGHTS
