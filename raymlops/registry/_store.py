"""The versioned model store on any pyarrow filesystem.

Layout (see DESIGN.md, "Store layout")::

    <store>/models/<name>/<version>/    model files (any sub-folders), signature.json, metadata.json
    <store>/models/<name>/aliases.json  {"champion": 3, "challenger": 4}
    <store>/models/<name>/.claims/<N>/  who took version number N (see _publish.py)
    <store>/models/<name>/.locks/       lease-lock claims of writers updating aliases.json

Three rules carry the design:

* A version is written once and never changed, and it becomes visible all at once. Files are
  uploaded into a hidden ``.staging-<uuid>`` folder; the writer then wins a number through a claim
  (safe on object stores, which have no atomic rename or conditional put), moves its files in and
  ``metadata.json`` last. Readers count only integer-named folders that hold a ``metadata.json``,
  so a crash, a Ctrl-C or a killed worker never leaves half a model that a replica might load.
* Nothing is loaded before its bytes are checked. ``metadata.json`` records the sha256 of every
  file; :meth:`ModelStore.fetch` and :meth:`ModelStore.verify` compare them with the bytes that
  will actually be read, and also refuse missing and unregistered files. With trusted keys, the
  Ed25519 signature over metadata.json is checked first, before any model file is opened.
* Alias moves are compare-and-swap under a lease lock, so concurrent promotions never lose one.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from raymlops import storage
from raymlops.errors import ConflictError

from . import _fsutil, _integrity, _publish
from ._errors import (
    IntegrityError,
    InvalidNameError,
    InvalidRegistrationError,
    ModelNotFoundError,
    RegistryConflictError,
    RegistryError,
    StoreConfigError,
)
from ._refs import ALIAS_RE, DEFAULT_ALIAS, NAME_RE, ModelRef, parse_ref
from ._signing import SIGNATURE_FILE, Signer, TrustedKeys, load_signer, load_trusted_keys

__all__ = [
    "ANY",
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
_ALIAS_LOCK = ".locks/aliases"
#: How long an alias writer's lock claim lives without a refresh (a crashed writer blocks this long).
ALIAS_LEASE_S = 30.0
_VERSION_RE = re.compile(r"^[1-9][0-9]*$")
#: Keys the store writes into metadata.json itself; a caller's value would be silently lost.
_RESERVED_KEYS = frozenset({"name", "version", "created_at", "files", "package_versions"})
#: File names the store writes into every version folder.
_RESERVED_FILES = (METADATA_FILE, SIGNATURE_FILE)
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


class _Any:
    """The type of :data:`ANY`."""

    def __repr__(self) -> str:
        return "ANY"


#: ``expected=ANY`` (the default) means "whatever the alias points at now": no compare-and-swap.
ANY: Final = _Any()


def resolve_store_uri(uri: str | None = None, configured: str | None = None) -> str:
    """Decide which store to use: ``uri``, ``$RAYMLOPS_STORE``, ``configured``, ``./raymlops-store``.

    The one precedence rule of the CLI and the library alike: an explicit ``--store``, then the
    environment, then the pipeline file's ``store:``, then the default folder.

    Plain paths are made absolute (and ``~`` expanded) so that the same store is used after a
    ``cd`` and so that Ray workers with another working directory resolve it identically. URIs are
    returned unchanged apart from a trailing ``/`` on their path.

    Args:
        uri: An explicit store path or URI, or None.
        configured: The pipeline file's ``store:``, or None.

    Returns:
        The store URI or absolute path.
    """
    raw = uri or os.environ.get(DEFAULT_STORE_ENV) or configured or DEFAULT_STORE
    if "://" not in raw:
        return os.path.abspath(os.path.expanduser(raw))
    split = urlsplit(raw)
    path = split.path.rstrip("/")
    return urlunsplit(split._replace(path=path)) if (path or split.netloc) else raw


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


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"invalid model name {name!r}: must match {NAME_RE.pattern} "
            "(letters, digits, '_', '.', '-'; at most 64 characters)"
        )


def _check_alias(name: str, alias: str) -> None:
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        raise InvalidNameError(f"invalid alias {alias!r} for model {name!r}: must match {ALIAS_RE.pattern}")


def _fmt_list(items: list[Any] | list[str]) -> str:
    return ", ".join(str(i) for i in items) if items else "(none)"


def _fmt_aliases(aliases: dict[str, int]) -> str:
    return _fmt_list([f"{a} -> {v}" for a, v in sorted(aliases.items())])


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
        key_id: The id of the key that signed it (from ``signature.json``), None if unsigned.
            Only trustworthy when ``trusted`` is True.
        trusted: Whether its signature was checked against this store's trusted keys and held.
        metadata_sha256: The sha256 of the ``metadata.json`` bytes as stored.
    """

    name: str
    version: int
    uri: str
    metadata: dict[str, Any]
    aliases: list[str] = field(default_factory=list)
    key_id: str | None = None
    trusted: bool = False
    metadata_sha256: str | None = field(default=None, repr=False)

    @property
    def ref(self) -> str:
        """The exact reference ``NAME:VERSION``, stable even when aliases move."""
        return f"{self.name}:{self.version}"

    @property
    def signed(self) -> bool:
        """Whether the version carries a signature file (see ``trusted`` for whether it was checked)."""
        return self.key_id is not None

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
    def gate(self) -> dict[str, Any] | None:
        """The gate outcome the registering pipeline recorded (covered by the signature), or None."""
        gate = self.metadata.get("gate")
        return gate if isinstance(gate, dict) else None

    @property
    def files(self) -> dict[str, str]:
        """The registered files: relative path -> sha256."""
        files = self.metadata.get("files", {})
        return files if isinstance(files, dict) else {}


def _key_id_of(signature_raw: bytes | None) -> str | None:
    if signature_raw is None:
        return None
    try:
        kid = json.loads(signature_raw.decode("utf-8")).get("key_id")
    except (ValueError, AttributeError):
        return "(unreadable signature)"
    return kid if isinstance(kid, str) else "(unreadable signature)"


class ModelStore:
    """A versioned model store rooted at a local path or any pyarrow filesystem URI.

    Example::

        store = ModelStore("s3://bucket/mlops")
        mv = store.register("digits", "out/model", {"metrics": {"accuracy": 0.97}})
        store.set_alias("digits", "champion", mv.version, expected=None)   # only if unset
        mv, path = store.fetch("digits")   # local, verified copy of the champion

    Concurrency, on local disks and object stores alike: writers registering the same model get
    distinct version numbers (a claim protocol, see ``_publish.py``), a writer that fails never
    deletes anything it did not write, and alias updates run under a lease lock, optionally as a
    compare-and-swap (``expected=``) with a last-moment check (``check=``).

    Trust: with a signing key (``signing_key=`` or ``$RAYMLOPS_SIGNING_KEY``) every new version is
    signed; with trusted keys (``trusted_keys=`` or ``$RAYMLOPS_TRUSTED_KEYS``) :meth:`get`,
    :meth:`fetch` and :meth:`verify` refuse unsigned or wrongly signed versions with
    :class:`SignatureError` before reading any model file. Listing (:meth:`list_versions`) does
    not check signatures; it reports ``key_id`` so tools can show it.
    """

    def __init__(
        self,
        uri: str | None = None,
        *,
        filesystem: pafs.FileSystem | None = None,
        signing_key: str | os.PathLike[str] | None = None,
        trusted_keys: Sequence[str | os.PathLike[str]] | None = None,
    ) -> None:
        """Open (not create) a store; folders are created on the first :meth:`register`.

        Args:
            uri: Store path or URI; see :func:`resolve_store_uri` for the default.
            filesystem: An already configured pyarrow filesystem (custom credentials, endpoints or a
                test double). ``uri`` is then the root path inside it and is required.
            signing_key: Private key PEM file that signs new versions; None reads
                ``$RAYMLOPS_SIGNING_KEY``; ``""`` turns signing off.
            trusted_keys: Public key PEM files whose signatures loaders accept; None reads
                ``$RAYMLOPS_TRUSTED_KEYS`` (``os.pathsep``-separated); ``[]`` turns checking off.

        Raises:
            StoreConfigError: ``filesystem`` without ``uri``, or an unreadable or wrong key file.
        """
        if filesystem is not None:
            if not uri:
                raise StoreConfigError(
                    "ModelStore(filesystem=...) also needs uri: the store's root path on it"
                )
            self.uri: str = uri.rstrip("/") or uri
            self._fs: pafs.FileSystem = filesystem
            self._root = self.uri
        else:
            self.uri = resolve_store_uri(uri)
            self._fs, self._root = storage.resolve(self.uri)
        self._signer: Signer | None = load_signer(signing_key)
        self._trusted: TrustedKeys | None = load_trusted_keys(trusted_keys)

    def __repr__(self) -> str:
        """Show which store this is, for logs and debugging sessions."""
        return f"ModelStore({self.uri!r})"

    @property
    def verifies_signatures(self) -> bool:
        """Whether this store refuses unsigned or wrongly signed versions (trusted keys are set)."""
        return self._trusted is not None

    # ------------------------------------------------------------------ paths

    def _models_path(self) -> str:
        return _fsutil.join_path(self._root, _MODELS_DIR)

    def _model_path(self, name: str) -> str:
        return _fsutil.join_path(self._root, _MODELS_DIR, name)

    def _version_path(self, name: str, version: int) -> str:
        return _fsutil.join_path(self._root, _MODELS_DIR, name, str(version))

    def _version_uri(self, name: str, version: int) -> str:
        return storage.join(self.uri, _MODELS_DIR, name, str(version))

    # ---------------------------------------------------------------- listing

    def _version_folders(self, name: str) -> list[int]:
        """All integer-named folders of a model, published or not."""
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
            if info.type == pafs.FileType.Directory and NAME_RE.fullmatch(info.base_name)
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
        """All published versions of a model, oldest first (signatures are reported, not checked).

        Raises:
            ModelNotFoundError: The model has no published version; the message lists the models.
        """
        versions = self._require_versions(name)
        aliases = self._read_aliases(name)
        return [self._load(name, v, aliases)[0] for v in versions]

    def _load(self, name: str, version: int, aliases: dict[str, int]) -> tuple[ModelVersion, bytes | None]:
        """Read a version's metadata.json and signature.json (no model file is touched)."""
        root = self._version_path(name, version)
        path = _fsutil.join_path(root, METADATA_FILE)
        raw = _fsutil.read_bytes(self._fs, path)
        try:
            metadata = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryError(
                f"{METADATA_FILE} of {name}:{version} ({path}) is not valid JSON: {exc}"
            ) from exc
        if not isinstance(metadata, dict):
            raise RegistryError(f"{METADATA_FILE} of {name}:{version} ({path}) is not a JSON object")
        try:
            signature: bytes | None = _fsutil.read_bytes(self._fs, _fsutil.join_path(root, SIGNATURE_FILE))
        except FileNotFoundError:
            signature = None
        mv = ModelVersion(
            name=name,
            version=version,
            uri=self._version_uri(name, version),
            metadata=metadata,
            aliases=sorted(a for a, v in aliases.items() if v == version),
            key_id=_key_id_of(signature),
            metadata_sha256=hashlib.sha256(raw).hexdigest(),
        )
        return mv, signature

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

    def set_alias(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        expected: int | None | _Any = ANY,
        check: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        """Point ``alias`` (e.g. ``champion``) at an existing version, replacing any previous target.

        The update runs under the model's alias lock (a lease lock that works on object stores), so
        concurrent updates of different aliases all land; ``aliases.json`` is replaced atomically,
        so a serving replica reading it sees either the old or the new mapping.

        Args:
            name: The model.
            alias: The alias to set.
            version: The version it is to point at.
            expected: Compare-and-swap: the version the caller believes the alias points at now,
                or None for "must be unset". The default, ``ANY``, overwrites whatever is there.
            check: Called with the current aliases while the lock is held, just before the write;
                it may raise to abort (e.g. re-check a promotion gate against the champion of this
                very moment). Whatever it raises propagates and nothing is written.

        Raises:
            InvalidNameError: The alias name is invalid.
            ModelNotFoundError: The model or the version does not exist; the message lists versions.
            RegistryConflictError: ``expected`` does not match (another writer moved the alias), or
                the alias lock stayed held by another live writer.
        """
        _check_alias(name, alias)
        versions = self._require_versions(name)
        if isinstance(version, bool) or not isinstance(version, int) or version not in versions:
            raise ModelNotFoundError(
                f"cannot point alias {alias!r} of model {name!r} at version {version!r}: no such version; "
                f"versions: {_fmt_list(versions)}"
            )

        def change(current: dict[str, int]) -> None:
            current[alias] = version

        self._update_aliases(name, alias, expected, check, change)

    def remove_alias(
        self,
        name: str,
        alias: str,
        *,
        expected: int | _Any = ANY,
        check: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        """Delete an alias; the version it pointed at stays in the store.

        Args:
            name: The model.
            alias: The alias to delete.
            expected: Compare-and-swap: remove only if it still points at this version.
            check: As for :meth:`set_alias`.

        Raises:
            ModelNotFoundError: The model or the alias does not exist; the message lists the aliases.
            RegistryConflictError: ``expected`` does not match, or the alias lock is held.
        """
        _check_alias(name, alias)
        self._require_versions(name)

        def change(current: dict[str, int]) -> None:
            if alias not in current:
                raise ModelNotFoundError(
                    f"model {name!r} has no alias {alias!r}; aliases: {_fmt_aliases(current)}"
                )
            del current[alias]

        self._update_aliases(name, alias, expected, check, change)

    def _update_aliases(
        self,
        name: str,
        alias: str,
        expected: int | None | _Any,
        check: Callable[[dict[str, int]], None] | None,
        change: Callable[[dict[str, int]], None],
    ) -> None:
        """Read, compare, check, change and write aliases.json, all under the model's alias lock."""
        lock = storage.LeaseLock(
            self._fs,
            _fsutil.join_path(self._model_path(name), _ALIAS_LOCK),
            ALIAS_LEASE_S,
            owner=f"alias update of {name!r}",
        )
        try:
            lock.acquire()
        except ConflictError as err:
            raise RegistryConflictError(f"cannot update the aliases of model {name!r}: {err}") from err
        try:
            current = self._read_aliases(name)
            if not isinstance(expected, _Any) and current.get(alias) != expected:
                raise RegistryConflictError(_cas_message(name, alias, expected, current.get(alias)))
            if check is not None:
                check(dict(current))
            change(current)
            _fsutil.write_json_atomic(self._fs, self._aliases_path(name), dict(sorted(current.items())))
        finally:
            lock.release()

    # ------------------------------------------------------------- resolution

    def get(self, ref: str | ModelRef) -> ModelVersion:
        """Resolve ``NAME`` (its champion), ``NAME:VERSION`` or ``NAME@ALIAS`` to a version.

        With trusted keys the version's signature is checked here (only metadata.json and
        signature.json are read), so everything that loads through the store is covered.

        Raises:
            InvalidNameError: ``ref`` is malformed.
            ModelNotFoundError: The model, version or alias does not exist (or a bare ``NAME`` has no
                champion); the message lists what does exist.
            SignatureError: Trusted keys are configured and the version is unsigned, signed by an
                untrusted key, or its metadata does not match its signature.
        """
        mv, signature = self._resolve(ref)
        if self._trusted is not None:
            mv.key_id = self._trusted.check(mv.name, mv.version, mv.metadata, signature)
            mv.trusted = True
        return mv

    def _resolve(self, ref: str | ModelRef) -> tuple[ModelVersion, bytes | None]:
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
            listed = _fmt_aliases(aliases)
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

    def register(
        self,
        name: str,
        source_dir: str | Path,
        metadata: dict[str, Any],
        *,
        signing_key: str | os.PathLike[str] | None = None,
    ) -> ModelVersion:
        """Store every file under ``source_dir`` as the model's next version.

        The files are uploaded to a hidden staging folder while their sha256 sums are computed;
        then a version number is claimed, the files are moved in, ``signature.json`` (when signing)
        and ``metadata.json`` last. On any exception, KeyboardInterrupt included, this writer's
        staging and moved files are removed (best effort) and the exception re-raised, so no partial
        version ever becomes visible. A number claimed by a writer that then failed stays unused.

        Args:
            name: Model name, matching ``^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$``.
            source_dir: Local folder holding the model files (sub-folders are kept).
            metadata: JSON-serialisable caller metadata (metrics, params, data fingerprint, ``gate``
                outcome, ...). The store adds ``name``, ``version``, ``created_at`` (UTC ISO 8601),
                ``files`` (relative path -> sha256) and ``package_versions``.
            signing_key: Private key file to sign this version with, instead of the store's.

        Returns:
            The new version (with no aliases).

        Raises:
            InvalidNameError: Invalid name.
            InvalidRegistrationError: Empty source folder, a top-level ``metadata.json`` or
                ``signature.json`` in it, or metadata that uses one of the keys the store writes.
            TypeError: ``metadata`` is not a dict or not JSON-serialisable.
            FileNotFoundError: ``source_dir`` is not a folder.
            StoreConfigError: ``signing_key`` cannot be loaded.
        """
        files = _check_registration(name, source_dir, metadata)
        signer = self._signer if signing_key is None else load_signer(signing_key)
        model_path = self._model_path(name)
        staging = _fsutil.join_path(model_path, f"{_STAGING_PREFIX}{uuid.uuid4().hex}")
        written: dict[str, bytes] = {}
        try:
            sums = self._upload(staging, files)
            full = dict(metadata)
            full.update(name=name, files=sums, package_versions=package_versions())

            def finish(final: dict[str, Any]) -> list[str]:
                written.update(_seal(self._fs, staging, final, signer))
                return list(written)

            version = _publish.publish(self._fs, model_path, staging, [rel for rel, _ in files], full, finish)
        except BaseException:
            _fsutil.remove_quietly(self._fs, staging)
            raise
        _fsutil.remove_quietly(self._fs, staging)  # only empty folders are left in it
        return ModelVersion(
            name=name,
            version=version,
            uri=self._version_uri(name, version),
            metadata=json.loads(written[METADATA_FILE]),  # exactly what get() will read back
            aliases=[],
            key_id=signer.key_id if signer else None,
            metadata_sha256=hashlib.sha256(written[METADATA_FILE]).hexdigest(),
        )

    def _upload(self, staging: str, files: list[tuple[str, Path]]) -> dict[str, str]:
        """Copy the model files into the staging folder; return relative path -> sha256."""
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
        return sums

    # ------------------------------------------------------------ integrity

    def verify(self, ref: str | ModelRef) -> ModelVersion:
        """Check a version's files in the store against its recorded sha256 sums, without copying.

        With trusted keys the signature is checked first (see :meth:`get`).

        Raises:
            IntegrityError: A listed file is missing or differs, or an unlisted file is present; the
                message names each file (with both sums for a mismatch).
            SignatureError: See :meth:`get`.
            ModelNotFoundError: ``ref`` does not resolve.
        """
        mv = self.get(ref)
        root = self._version_path(mv.name, mv.version)
        present = {
            info.path[len(root) :].lstrip("/"): info.path
            for info in _fsutil.list_children(self._fs, root, recursive=True)
            if info.type == pafs.FileType.File
        }
        problems = _integrity.compare(
            mv.files, present, lambda rel: _fsutil.stream_sha256(self._fs, present[rel])
        )
        if problems:
            raise IntegrityError(_integrity.integrity_message(mv, mv.uri, problems))
        return mv

    # ----------------------------------------------------------------- fetch

    def _identity(self) -> str:
        if self._fs.type_name == "local":
            return f"local:{self._root}"
        return f"{self._fs.type_name}:{self.uri}"

    def _cache_root(self) -> Path:
        base = os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "raymlops")
        store_hash = hashlib.sha256(self._identity().encode("utf-8")).hexdigest()[:16]
        return Path(base).expanduser().resolve() / store_hash

    def fetch(self, ref: str | ModelRef, dest: str | Path | None = None) -> tuple[ModelVersion, Path]:
        """Copy a version to a local folder and verify every byte against the recorded sums.

        Without ``dest`` the copy goes to the cache, ``$RAYMLOPS_CACHE`` (default
        ``~/.cache/raymlops``) ``/<store-hash>/<name>/<version>``. A copy already there is reused
        but re-verified on every call, so a tampered or truncated cache is caught, not loaded. The
        copy is assembled in a temporary sibling folder and renamed into place only after it has
        been verified, so concurrent fetches of the same version are safe.

        With trusted keys the signature is checked before anything is copied. A version whose
        download failed verification is remembered for a few minutes in this process (keyed by
        its metadata digest) and refused at once instead of being downloaded again; see
        ``_integrity.py``.

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
            SignatureError: See :meth:`get`; nothing was copied.
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
                if dest is not None and not _integrity.is_copy_of(target, mv):
                    raise RegistryError(
                        f"cannot fetch {mv.ref} into {target}: the folder is not empty and is not a copy "
                        "of this version; choose an empty or new folder"
                    )
                if dest is not None or not _integrity.is_earlier_registration(target, mv):
                    _integrity.verify_local_or_remove(mv, target)
                    return mv, target
                shutil.rmtree(target)  # a copy from a store since recreated at this URI: replaced
        failure_key = (self._identity(), mv.name, mv.version, mv.metadata_sha256 or "")
        _integrity.FAILED_FETCHES.check(failure_key)
        self._download(mv, target, failure_key)
        return mv, target

    def _download(self, mv: ModelVersion, target: Path, failure_key: tuple[str, str, int, str]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.fetch-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()  # copy_files creates sub-folders but not the destination itself
            _copy_version(self._fs, self._version_path(mv.name, mv.version), tmp)
            problems = _integrity.verify_local(mv, tmp)
            if problems:
                message = _integrity.integrity_message(mv, mv.uri, problems)
                _integrity.FAILED_FETCHES.remember(failure_key, message)
                raise IntegrityError(message + "; nothing was kept locally")
            try:
                os.rename(tmp, target)  # replaces an empty folder; fails if another fetch won
            except OSError:
                if not (target.is_dir() and any(target.iterdir())):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                _integrity.verify_local_or_remove(mv, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _copy_version(fs: pafs.FileSystem, source: str, dest: Path) -> None:
    """Download a version folder (module-level so tests can watch downloads happen)."""
    pafs.copy_files(source, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def _cas_message(name: str, alias: str, expected: int | None, actual: int | None) -> str:
    wanted = "unset" if expected is None else f"at version {expected}"
    now = "is unset" if actual is None else f"points at version {actual}"
    return (
        f"alias {alias!r} of model {name!r} {now}, but the update expected it {wanted}: another writer "
        f"moved it since it was read. Re-read the aliases (raymlops models show {name}) and retry"
    )


def _check_registration(
    name: str, source_dir: str | Path, metadata: dict[str, Any]
) -> list[tuple[str, Path]]:
    """Refuse a registration before anything is written; return the files to upload."""
    _check_name(name)
    source = Path(source_dir).expanduser().resolve()
    if not source.is_dir():
        raise FileNotFoundError(f"cannot register model {name!r}: source folder {source} does not exist")
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata for model {name!r} must be a dict, got {type(metadata).__name__}")
    clashes = sorted(_RESERVED_KEYS & set(metadata))
    if clashes:
        raise InvalidRegistrationError(
            f"metadata for model {name!r} sets {clashes}, which the store writes itself "
            f"({sorted(_RESERVED_KEYS)}); rename those keys"
        )
    try:
        json.dumps(metadata, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata for model {name!r} is not JSON-serialisable: {exc}") from exc
    files = _integrity.local_files(source)
    if not files:
        raise InvalidRegistrationError(
            f"cannot register model {name!r}: source folder {source} contains no files"
        )
    for reserved in _RESERVED_FILES:
        if any(rel == reserved for rel, _ in files):
            raise InvalidRegistrationError(
                f"cannot register model {name!r}: {source / reserved} would be overwritten by the "
                "store's own file of that name; pass its content as metadata or rename the file"
            )
    return files


def _seal(
    fs: pafs.FileSystem, staging: str, metadata: dict[str, Any], signer: Signer | None
) -> dict[str, bytes]:
    """Write signature.json (when signing) and metadata.json into staging; return them in publish order."""
    data = _fsutil.dump_json(metadata)
    final = json.loads(data)  # sign exactly what readers will parse
    written: dict[str, bytes] = {}
    if signer is not None:
        signature = _fsutil.dump_json(signer.sign(final))
        _fsutil.write_bytes(fs, _fsutil.join_path(staging, SIGNATURE_FILE), signature)
        written[SIGNATURE_FILE] = signature
    _write_json(fs, _fsutil.join_path(staging, METADATA_FILE), data)
    written[METADATA_FILE] = data
    return written


def _write_json(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write the staging metadata.json (module-level so tests can simulate a crash right here)."""
    _fsutil.write_bytes(fs, path, data)
