"""Fixtures of the registry tests: stores on local disk and on a real S3 server, key pairs, model folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymlops.registry import SIGNING_KEY_ENV, TRUSTED_KEYS_ENV, write_key_pair


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No signing configuration leaks in from the developer's shell; a private fetch cache per test."""
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    monkeypatch.delenv(TRUSTED_KEYS_ENV, raising=False)
    monkeypatch.setenv("RAYMLOPS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(params=["local", "s3"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store, once on a local folder and once on the S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return str(request.getfixturevalue("s3_store_uri"))


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """Two independent key pairs, "good" and "other": (private PEM, public PEM) each."""
    return {label: write_key_pair(tmp_path / f"keys-{label}") for label in ("good", "other")}


def make_model(root: Path, files: dict[str, bytes]) -> Path:
    """Write a model folder with the given relative paths and contents."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root
