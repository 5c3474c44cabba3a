"""The versioned model store on any pyarrow filesystem.

Layout (see DESIGN.md, "Store layout")::

    <store>/models/<name>/<version>/    model files (any sub-folders) and metadata.json
    <store>/models/<name>/aliases.json  {"champion": 3, "challenger": 4}

Two rules carry the design:

* A version is written once and never changed, and it becomes visible all at once. Files are
  uploaded into a hidden ``.staging-<uuid>`` folder, ``metadata.json`` is written last, and only
  then is the folder published under its number. Readers count only integer-named folders that
  hold a ``metadata.json``, so a crash, a Ctrl-C or a killed worker never leaves half a model
  that a serving replica might load.
* Nothing is loaded before its bytes are checked. ``metadata.json`` records the sha256 of every
  file; :meth:`ModelStore.fetch` and :meth:`ModelStore.verify` compare them with the bytes that
  will actually be read, and also refuse missing and unregistered files.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from . import _fsutil
from ._errors import IntegrityError, ModelNotFoundError, RegistryError
from ._refs import ALIAS_RE, DEFAULT_ALIAS, NAME_RE, ModelRef, parse_ref

__all__ = [
    "CACHE_ENV",
    "DEFAULT_STORE",
    "DEFAULT_STORE_ENV",
    "ModelStore",
    "ModelVersion",
    "package_versions",
    "resolve_store_uri",
]

DEFAULT_STORE_ENV = "RAYMLOPS_STORE"
#: Where :meth:`ModelStore.fetch` keeps local copies; defaults to ``~/.cache/raymlops``.
CACHE_ENV = "RAYMLOPS_CACHE"
#: The store used when neither an argument nor ``$RAYMLOPS_STORE`` names one (relative to the cwd).
DEFAULT_STORE = "raymlops-store"

METADATA_FILE = "metadata.json"
ALIASES_FILE = "aliases.json"
_MODELS_DIR = "models"
_STAGING_PREFIX = ".staging-"
_VERSION_RE = re.compile(r"^[1-9][0-9]*$")
#: Keys the store writes into metadata.json itself; a caller's value would be silently lost.
_RESERVED_KEYS = frozenset({"name", "version", "created_at", "files", "package_versions"})
#: Filesystems whose directory move is an atomic rename that fails when the target is non-empty.
_RENAME_FILESYSTEMS = frozenset({"local", "hdfs"})
_MAX_PUBLISH_ATTEMPTS = 100
_TRACKED_PACKAGES = (
    "ray",
    "tensorflow",
    "keras",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "numpy",
    "raymlops",
)


def resolve_store_uri(uri: str | None = None) -> str:
    """Decide which store to use: ``uri``, else ``$RAYMLOPS_STORE``, else ``./raymlops-store``.

    Plain paths are made absolute (and ``~`` expanded) so that the same store is used after a
    ``cd`` and so that Ray workers with another working directory resolve it identically. URIs
    (anything with ``://``) are returned unchanged apart from a trailing ``/``.

    Args:
        uri: An explicit store path or URI, or None.

    Returns:
        The store URI or absolute path.
    """
    raw = uri or os.environ.get(DEFAULT_STORE_ENV) or DEFAULT_STORE
    if "://" in raw:
        scheme, _, rest = raw.partition("://")
        stripped = rest.rstrip("/")
        return f"{scheme}://{stripped}" if stripped else raw
    return os.path.abspath(os.path.expanduser(raw))


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple[tuple[str, str], ...]:
    found = [("python", platform.python_version())]
    for dist in _TRACKED_PACKAGES:
        try:
            found.append((dist, importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(found)


def package_versions() -> dict[str, str]:
    """Versions of Python and the libraries a saved model depends on; uninstalled ones are skipped.

    Recorded in every version's metadata so that a model that fails to load months later can be
    matched with the environment that wrote it.
    """
    return dict(_package_versions())


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"invalid model name {name!r}: must match {NAME_RE.pattern} "
            "(letters, digits, '_', '.', '-'; at most 64 characters)"
        )


def _local_files(root: Path) -> list[tuple[str, Path]]:
    """Every file under ``root`` as (posix relative path, absolute path), sorted for determinism."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for filename in filenames:
            path = Path(dirpath) / filename
            found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def _fmt_list(items: list[Any] | list[str]) -> str:
    return ", ".join(str(i) for i in items) if items else "(none)"


@dataclass
class ModelVersion:
    """One registered version of a model, as read from the store.

    Attributes:
        name: The model name.
        version: The version number (1, 2, ...).
        uri: The URI of the version folder in the store (same scheme as the store's URI).
        metadata: The parsed ``metadata.json``: the caller's keys plus ``name``, ``version``,
            ``created_at``, ``files`` (relative path -> sha256) and ``package_versions``.
        aliases: The aliases that point at this version, sorted.
    """

    name: str
    version: int
    uri: str
    metadata: dict[str, Any]
    aliases: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """The exact reference ``NAME:VERSION``, stable even when aliases move."""
        return f"{self.name}:{self.version}"

    @property
    def created_at(self) -> datetime | None:
        """When the version was registered (timezone-aware UTC), or None if not recorded."""
        value = self.metadata.get("created_at")
        return datetime.fromisoformat(value) if isinstance(value, str) else None

    @property
    def metrics(self) -> dict[str, Any]:
        """The evaluation metrics recorded at registration (empty if none were given)."""
        metrics = self.metadata.get("metrics", {})
        return metrics if isinstance(metrics, dict) else {}

    @property
    def files(self) -> dict[str, str]:
        """The registered files: relative path -> sha256."""
        files = self.metadata.get("files", {})
        return files if isinstance(files, dict) else {}


class ModelStore:
    """A versioned model store rooted at a local path or any pyarrow filesystem URI.

    Example::

        store = ModelStore("s3://bucket/mlops")
        mv = store.register("digits", "out/model", {"metrics": {"accuracy": 0.97}})
        store.set_alias("digits", "champion", mv.version)
        mv, path = store.fetch("digits")   # local, sha256-verified copy of the champion

    Concurrency: two writers registering the same model get distinct version numbers on local
    disks and HDFS (a rename onto an existing version fails and the writer takes the next number).
    Object stores have no atomic folder rename, so there two writers racing for the same number
    within the same instant could collide; alias updates are last-writer-wins everywhere.
    """

    def __init__(self, uri: str | None = None, *, filesystem: pafs.FileSystem | None = None) -> None:
        """Open (not create) a store; folders are created on the first :meth:`register`.

        Args:
            uri: Store path or URI; see :func:`resolve_store_uri` for the default.
            filesystem: An already configured pyarrow filesystem (custom credentials, endpoints or a
                test double). ``uri`` is then the root path inside it and is required.
        """
        if filesystem is not None:
            if not uri:
                raise ValueError("ModelStore(filesystem=...) also needs uri: the store's root path on it")
            self.uri: str = uri.rstrip("/") or uri
            self._fs: pafs.FileSystem = filesystem
            self._root = self.uri
        else:
            self.uri = resolve_store_uri(uri)
            if "://" in self.uri:
                self._fs, root = pafs.FileSystem.from_uri(self.uri)
                self._root = root.rstrip("/") or root
            else:
                self._fs = pafs.LocalFileSystem()
                self._root = self.uri

    def __repr__(self) -> str:
        """Show which store this is, for logs and debugging sessions."""
        return f"ModelStore({self.uri!r})"

    # ------------------------------------------------------------------ paths

    def _models_path(self) -> str:
        return _fsutil.join_path(self._root, _MODELS_DIR)

    def _model_path(self, name: str) -> str:
        return _fsutil.join_path(self._root, _MODELS_DIR, name)

    def _version_path(self, name: str, version: int) -> str:
        return _fsutil.join_path(self._root, _MODELS_DIR, name, str(version))

    def _version_uri(self, name: str, version: int) -> str:
        return _fsutil.join_uri(self.uri, _MODELS_DIR, name, str(version))

    # ---------------------------------------------------------------- listing

    def _version_folders(self, name: str) -> list[int]:
        """All integer-named folders of a model, published or not (used to pick a free number)."""
        return sorted(
            int(info.base_name)
            for info in _fsutil.list_children(self._fs, self._model_path(name))
            if info.type == pafs.FileType.Directory and _VERSION_RE.match(info.base_name)
        )

    def _visible_versions(self, name: str) -> list[int]:
        """Published versions: integer-named folders that contain metadata.json."""
        candidates = self._version_folders(name)
        if not candidates:
            return []
        infos = self._fs.get_file_info(
            [_fsutil.join_path(self._version_path(name, v), METADATA_FILE) for v in candidates]
        )
        return [v for v, info in zip(candidates, infos, strict=True) if info.type == pafs.FileType.File]

    def _has_version(self, name: str, version: int) -> bool:
        path = _fsutil.join_path(self._version_path(name, version), METADATA_FILE)
        return bool(self._fs.get_file_info(path).type == pafs.FileType.File)

    def list_models(self) -> list[str]:
        """Names of the models that have at least one published version, sorted."""
        names = [
            info.base_name
            for info in _fsutil.list_children(self._fs, self._models_path())
            if info.type == pafs.FileType.Directory and NAME_RE.match(info.base_name)
        ]
        return sorted(n for n in names if self._visible_versions(n))

    def _unknown_model(self, name: str) -> ModelNotFoundError:
        return ModelNotFoundError(
            f"model {name!r} not found in store {self.uri}; models: {_fmt_list(self.list_models())}"
        )

    def _require_versions(self, name: str) -> list[int]:
        _check_name(name)
        versions = self._visible_versions(name)
        if not versions:
            raise self._unknown_model(name)
        return versions

    def list_versions(self, name: str) -> list[ModelVersion]:
        """All published versions of a model, oldest first.

        Raises:
            ModelNotFoundError: The model has no published version; the message lists the models.
        """
        versions = self._require_versions(name)
        aliases = self._read_aliases(name)
        return [self._load(name, v, aliases) for v in versions]

    def _load(self, name: str, version: int, aliases: dict[str, int]) -> ModelVersion:
        path = _fsutil.join_path(self._version_path(name, version), METADATA_FILE)
        metadata = _fsutil.read_json(self._fs, path, f"{METADATA_FILE} of {name}:{version}")
        if not isinstance(metadata, dict):
            raise RegistryError(f"{METADATA_FILE} of {name}:{version} ({path}) is not a JSON object")
        return ModelVersion(
            name=name,
            version=version,
            uri=self._version_uri(name, version),
            metadata=metadata,
            aliases=sorted(a for a, v in aliases.items() if v == version),
        )

    # ---------------------------------------------------------------- aliases

    def _aliases_path(self, name: str) -> str:
        return _fsutil.join_path(self._model_path(name), ALIASES_FILE)

    def _read_aliases(self, name: str) -> dict[str, int]:
        path = self._aliases_path(name)
        try:
            raw = _fsutil.read_json(self._fs, path, f"{ALIASES_FILE} of model {name!r}")
        except FileNotFoundError:
            return {}
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in raw.items()
        ):
            raise RegistryError(
                f"{ALIASES_FILE} of model {name!r} ({path}) must map alias names to version numbers, "
                f"got {raw!r}"
            )
        return dict(raw)

    def aliases(self, name: str) -> dict[str, int]:
        """The model's aliases, alias -> version (empty if none are set).

        Raises:
            ModelNotFoundError: The model has no published version.
        """
        self._require_versions(name)
        return dict(sorted(self._read_aliases(name).items()))

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` (e.g. ``champion``) at an existing version, replacing any previous target.

        The aliases file is replaced atomically, so a serving replica reading it concurrently sees
        either the old or the new mapping.

        Raises:
            ValueError: The alias name is invalid.
            ModelNotFoundError: The model or the version does not exist; the message lists versions.
        """
        if not isinstance(alias, str) or not ALIAS_RE.match(alias):
            raise ValueError(f"invalid alias {alias!r} for model {name!r}: must match {ALIAS_RE.pattern}")
        versions = self._require_versions(name)
        if isinstance(version, bool) or not isinstance(version, int) or version not in versions:
            raise ModelNotFoundError(
                f"cannot point alias {alias!r} of model {name!r} at version {version!r}: no such version; "
                f"versions: {_fmt_list(versions)}"
            )
        current = self._read_aliases(name)
        current[alias] = version
        _fsutil.write_json_atomic(self._fs, self._aliases_path(name), dict(sorted(current.items())))

    def remove_alias(self, name: str, alias: str) -> None:
        """Delete an alias; the version it pointed at stays in the store.

        Raises:
            ModelNotFoundError: The model or the alias does not exist; the message lists the aliases.
        """
        self._require_versions(name)
        current = self._read_aliases(name)
        if alias not in current:
            raise ModelNotFoundError(
                f"model {name!r} has no alias {alias!r}; aliases: "
                f"{_fmt_list([f'{a} -> {v}' for a, v in sorted(current.items())])}"
            )
        del current[alias]
        _fsutil.write_json_atomic(self._fs, self._aliases_path(name), dict(sorted(current.items())))

    # ------------------------------------------------------------- resolution

    def get(self, ref: str | ModelRef) -> ModelVersion:
        """Resolve ``NAME`` (its champion), ``NAME:VERSION`` or ``NAME@ALIAS`` to a version.

        Raises:
            ValueError: ``ref`` is malformed.
            ModelNotFoundError: The model, version or alias does not exist (or a bare ``NAME`` has no
                champion); the message lists what does exist.
        """
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        name = parsed.name
        aliases = self._read_aliases(name)
        if parsed.version is not None:
            version = parsed.version
            if not self._has_version(name, version):
                versions = self._require_versions(name)
                raise ModelNotFoundError(
                    f"model {name!r} has no version {version}; versions: {_fmt_list(versions)}"
                )
            return self._load(name, version, aliases)

        alias = parsed.alias or DEFAULT_ALIAS
        if alias not in aliases:
            versions = self._require_versions(name)
            listed = _fmt_list([f"{a} -> {v}" for a, v in sorted(aliases.items())])
            if parsed.alias is None:
                raise ModelNotFoundError(
                    f"model {name!r} has no {DEFAULT_ALIAS!r} alias, so the bare reference {name!r} "
                    f"names no version; aliases: {listed}; versions: {_fmt_list(versions)}. Use "
                    f"{name}:{versions[-1]} or promote a version to {DEFAULT_ALIAS}"
                )
            raise ModelNotFoundError(
                f"model {name!r} has no alias {alias!r}; aliases: {listed}; versions: {_fmt_list(versions)}"
            )
        version = aliases[alias]
        if not self._has_version(name, version):
            versions = self._require_versions(name)
            raise ModelNotFoundError(
                f"alias {alias!r} of model {name!r} points at version {version}, which does not exist; "
                f"versions: {_fmt_list(versions)}"
            )
        return self._load(name, version, aliases)

    # --------------------------------------------------------------- register

    def register(self, name: str, source_dir: str | Path, metadata: dict[str, Any]) -> ModelVersion:
        """Store every file under ``source_dir`` as the model's next version.

        The files are uploaded to a hidden staging folder while their sha256 sums are computed;
        ``metadata.json`` is written last and the folder is then published under the next free
        number. On any exception, KeyboardInterrupt included, the staging folder is removed (best
        effort) and the exception re-raised, so no partial version ever becomes visible.

        Args:
            name: Model name, matching ``^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$``.
            source_dir: Local folder holding the model files (sub-folders are kept).
            metadata: JSON-serialisable caller metadata (metrics, params, data fingerprint, ...).
                The store adds ``name``, ``version``, ``created_at`` (UTC ISO 8601), ``files``
                (relative path -> sha256) and ``package_versions``.

        Returns:
            The new version (with no aliases).

        Raises:
            ValueError: Invalid name, empty source folder, a top-level ``metadata.json`` in it, or
                metadata that uses one of the keys the store writes.
            TypeError: ``metadata`` is not a dict or not JSON-serialisable.
            FileNotFoundError: ``source_dir`` is not a folder.
        """
        _check_name(name)
        source = Path(source_dir).expanduser().resolve()
        if not source.is_dir():
            raise FileNotFoundError(f"cannot register model {name!r}: source folder {source} does not exist")
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata for model {name!r} must be a dict, got {type(metadata).__name__}")
        clashes = sorted(_RESERVED_KEYS & set(metadata))
        if clashes:
            raise ValueError(
                f"metadata for model {name!r} sets {clashes}, which the store writes itself "
                f"({sorted(_RESERVED_KEYS)}); rename those keys"
            )
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metadata for model {name!r} is not JSON-serialisable: {exc}") from exc
        files = _local_files(source)
        if not files:
            raise ValueError(f"cannot register model {name!r}: source folder {source} contains no files")
        if any(rel == METADATA_FILE for rel, _ in files):
            raise ValueError(
                f"cannot register model {name!r}: {source / METADATA_FILE} would be overwritten by the "
                "store's metadata; pass its content as metadata or rename the file"
            )

        staging = _fsutil.join_path(self._model_path(name), f"{_STAGING_PREFIX}{uuid.uuid4().hex}")
        try:
            self._fs.create_dir(staging, recursive=True)
            sums: dict[str, str] = {}
            made_dirs: set[str] = {staging}
            for rel, path in files:
                dest = _fsutil.join_path(staging, rel)
                parent = dest.rsplit("/", 1)[0]
                if parent not in made_dirs:
                    self._fs.create_dir(parent, recursive=True)
                    made_dirs.add(parent)
                sums[rel] = _fsutil.upload_file(self._fs, path, dest)
            full = dict(metadata)
            full.update(name=name, files=sums, package_versions=package_versions())
            version = self._publish(name, staging, full)
        except BaseException:
            _fsutil.remove_quietly(self._fs, staging)
            raise
        return ModelVersion(
            name=name,
            version=version,
            uri=self._version_uri(name, version),
            metadata=json.loads(json.dumps(full)),  # exactly what get() will read back
            aliases=[],
        )

    def _publish(self, name: str, staging: str, metadata: dict[str, Any]) -> int:
        """Write metadata.json into the staging folder and publish it under the next free number.

        ``metadata`` is updated in place with the final ``version`` and ``created_at``.
        """
        staging_meta = _fsutil.join_path(staging, METADATA_FILE)
        for _ in range(_MAX_PUBLISH_ATTEMPTS):
            version = max(self._version_folders(name), default=0) + 1
            target = self._version_path(name, version)
            metadata["version"] = version
            metadata["created_at"] = _utc_now()
            _write_json(self._fs, staging_meta, metadata)
            if self._fs.type_name in _RENAME_FILESYSTEMS:
                try:
                    self._fs.move(staging, target)
                except OSError:
                    if _fsutil.exists(self._fs, target):
                        continue  # a concurrent writer took this number
                    raise
                return version
            if _fsutil.exists(self._fs, target):
                continue
            self._copy_publish(staging, target)
            return version
        raise RegistryError(
            f"could not publish a new version of model {name!r} in {self.uri}: "
            f"{_MAX_PUBLISH_ATTEMPTS} version numbers were taken concurrently"
        )

    def _copy_publish(self, staging: str, target: str) -> None:
        """Publish on filesystems without atomic folder rename: copy, metadata.json last.

        Until the final copy lands the target has no metadata.json and is invisible; its number is
        still counted by :meth:`_version_folders`, so a crash here never gets reused or mixed with
        another writer's files.
        """
        files = [
            info.path
            for info in _fsutil.list_children(self._fs, staging, recursive=True)
            if info.type == pafs.FileType.File
        ]
        staging_meta = _fsutil.join_path(staging, METADATA_FILE)
        published = False
        try:
            for src in sorted(files):
                if src == staging_meta:
                    continue
                dest = _fsutil.join_path(target, src[len(staging) :].lstrip("/"))
                self._fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
                self._fs.copy_file(src, dest)
            self._fs.copy_file(staging_meta, _fsutil.join_path(target, METADATA_FILE))
            published = True
        finally:
            if not published:
                _fsutil.remove_quietly(self._fs, target)
        _fsutil.remove_quietly(self._fs, staging)

    # ------------------------------------------------------------ integrity

    def verify(self, ref: str | ModelRef) -> ModelVersion:
        """Check a version's files in the store against its recorded sha256 sums, without copying.

        Raises:
            IntegrityError: A listed file is missing or differs, or an unlisted file is present; the
                message names each file (with both sums for a mismatch).
            ModelNotFoundError: ``ref`` does not resolve.
        """
        mv = self.get(ref)
        root = self._version_path(mv.name, mv.version)
        present = {
            info.path[len(root) :].lstrip("/"): info.path
            for info in _fsutil.list_children(self._fs, root, recursive=True)
            if info.type == pafs.FileType.File
        }
        problems = _compare(mv.files, present, lambda rel: _fsutil.stream_sha256(self._fs, present[rel]))
        if problems:
            raise IntegrityError(_integrity_message(mv, mv.uri, problems))
        return mv

    # ----------------------------------------------------------------- fetch

    def _cache_root(self) -> Path:
        base = os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "raymlops")
        if self._fs.type_name == "local":
            identity = f"local:{self._root}"
        else:
            identity = f"{self._fs.type_name}:{self.uri}"
        store_hash = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
        return Path(base).expanduser().resolve() / store_hash

    def fetch(self, ref: str | ModelRef, dest: str | Path | None = None) -> tuple[ModelVersion, Path]:
        """Copy a version to a local folder and verify every byte against the recorded sums.

        Without ``dest`` the copy goes to the cache, ``$RAYMLOPS_CACHE`` (default
        ``~/.cache/raymlops``) ``/<store-hash>/<name>/<version>``. A copy already there is reused
        but re-verified on every call, so a tampered or truncated cache is caught, not loaded. The
        copy is assembled in a temporary sibling folder and renamed into place only after it has
        been verified, so concurrent fetches of the same version are safe.

        Args:
            ref: ``NAME``, ``NAME:VERSION``, ``NAME@ALIAS`` or a :class:`ModelRef`.
            dest: Local folder to copy into. It must be absent, empty, or an earlier copy of the
                same version (recognised by its metadata.json); anything else is refused rather
                than overwritten.

        Returns:
            The resolved version and the local folder holding its verified files (and metadata.json).

        Raises:
            IntegrityError: The copy does not match the recorded sums; the bad local copy has been
                removed. The message names each bad file and both sums.
            ModelNotFoundError: ``ref`` does not resolve.
            RegistryError: ``dest`` holds something that is not a copy of this version.
        """
        mv = self.get(ref)
        target = (
            self._cache_root() / mv.name / str(mv.version)
            if dest is None
            else Path(dest).expanduser().resolve()
        )
        if target.exists():
            if not target.is_dir():
                raise RegistryError(f"cannot fetch {mv.ref} into {target}: it exists and is not a folder")
            if any(target.iterdir()):
                if dest is not None and not _is_copy_of(target, mv):
                    raise RegistryError(
                        f"cannot fetch {mv.ref} into {target}: the folder is not empty and is not a copy "
                        "of this version; choose an empty or new folder"
                    )
                _verify_local_or_remove(mv, target)
                return mv, target

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.fetch-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()  # copy_files creates sub-folders but not the destination itself
            pafs.copy_files(
                self._version_path(mv.name, mv.version),
                str(tmp),
                source_filesystem=self._fs,
                destination_filesystem=pafs.LocalFileSystem(),
            )
            problems = _verify_local(mv, tmp)
            if problems:
                raise IntegrityError(_integrity_message(mv, mv.uri, problems) + "; nothing was kept locally")
            try:
                os.rename(tmp, target)  # replaces an empty folder; fails if another fetch won
            except OSError:
                if not (target.is_dir() and any(target.iterdir())):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                _verify_local_or_remove(mv, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return mv, target


def _write_json(fs: pafs.FileSystem, path: str, obj: Any) -> None:
    """Write the staging metadata.json (module-level so tests can simulate a crash right here)."""
    _fsutil.write_json(fs, path, obj)


def _compare(
    expected: dict[str, str], present: Mapping[str, object], sha_of: Callable[[str], str]
) -> list[str]:
    """Problems between the recorded sums and the files present (metadata.json is not listed)."""
    problems: list[str] = []
    for rel in sorted(expected):
        if rel not in present:
            problems.append(f"file {rel!r} is missing")
            continue
        actual = sha_of(rel)
        if actual != expected[rel]:
            problems.append(f"file {rel!r} has sha256 {actual}, expected {expected[rel]}")
    for rel in sorted(set(present) - set(expected) - {METADATA_FILE}):
        problems.append(f"file {rel!r} is not part of the registered version")
    return problems


def _integrity_message(mv: ModelVersion, location: str | Path, problems: list[str]) -> str:
    return f"integrity check failed for model {mv.name!r} version {mv.version} at {location}: " + "; ".join(
        problems
    )


def _local_present(root: Path) -> dict[str, Path]:
    return {rel: path for rel, path in _local_files(root)}


def _verify_local(mv: ModelVersion, root: Path) -> list[str]:
    """Problems with a local copy: file sums, plus its metadata.json must equal the store's."""
    present = _local_present(root)
    problems = _compare(mv.files, present, lambda rel: _fsutil.local_sha256(present[rel]))
    meta_path = root / METADATA_FILE
    try:
        local_meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        local_meta = None
    if local_meta != mv.metadata:
        problems.append(f"file {METADATA_FILE!r} is missing or differs from the store's")
    return problems


def _is_copy_of(root: Path, mv: ModelVersion) -> bool:
    """Whether a local folder was made by fetching ``mv`` (judged by its metadata.json only)."""
    try:
        meta = json.loads((root / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("name") == mv.name and meta.get("version") == mv.version


def _verify_local_or_remove(mv: ModelVersion, root: Path) -> None:
    problems = _verify_local(mv, root)
    if problems:
        shutil.rmtree(root, ignore_errors=True)
        raise IntegrityError(
            _integrity_message(mv, root, problems)
            + "; the local copy was removed, fetch again to download a fresh one"
        )
