"""Ed25519 signatures over a version's metadata.json (``cryptography``'s implementation, no home-made crypto).

What is signed: the canonical JSON (sorted keys, no whitespace) of the whole ``metadata.json``
content. That content already holds the sha256 of every file, the model's name and version number,
its metrics and the caller's ``gate`` outcome, so one signature covers all of them: a changed byte in
a model file fails its sha256, a changed sum or gate outcome fails the signature, and a signed
version copied to another name or number fails the name/version check.

``signature.json`` beside ``metadata.json``::

    {"alg": "ed25519", "key_id": "<first 16 hex of sha256(raw public key)>", "signature": "<base64>"}

Keys are PEM files: PKCS#8 for the private key (mode 0600), SubjectPublicKeyInfo for the public one.
Writers name the private key with ``$RAYMLOPS_SIGNING_KEY``; readers name trusted public keys with
``$RAYMLOPS_TRUSTED_KEYS`` (``os.pathsep``-separated paths).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._errors import RegistryConflictError, SignatureError, StoreConfigError

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "SIGNATURE_FILE",
    "SIGNING_KEY_ENV",
    "TRUSTED_KEYS_ENV",
    "Signer",
    "TrustedKeys",
    "canonical_json",
    "key_id",
    "load_signer",
    "load_trusted_keys",
    "write_key_pair",
]

log = logging.getLogger(__name__)

SIGNING_KEY_ENV = "RAYMLOPS_SIGNING_KEY"
TRUSTED_KEYS_ENV = "RAYMLOPS_TRUSTED_KEYS"
SIGNATURE_FILE = "signature.json"
PRIVATE_KEY_FILE = "raymlops-signing-key.pem"
PUBLIC_KEY_FILE = "raymlops-signing-key.pub.pem"
_ALG = "ed25519"


def canonical_json(obj: Any) -> bytes:
    """The bytes that are signed: JSON with sorted keys and no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of sha256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def write_key_pair(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Generate an Ed25519 key pair as two PEM files in ``out_dir`` (created if missing).

    The private key is written with mode 0600 and never overwrites anything: if either file is
    already there, nothing is written.

    Returns:
        ``(private_path, public_path)``: give the first to writers (``$RAYMLOPS_SIGNING_KEY``) and
        the second to every loader (``$RAYMLOPS_TRUSTED_KEYS``).

    Raises:
        RegistryConflictError: A key file already exists in ``out_dir``.
    """
    folder = Path(out_dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    private_path, public_path = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise RegistryConflictError(
                f"refusing to overwrite the existing key file {path}; move it away or choose another folder"
            )
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively (O_EXCL: never follows or replaces anything) with ``mode``."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as err:
        raise RegistryConflictError(f"refusing to overwrite the existing key file {path}") from err
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)  # the umask may only have narrowed it; make it exact
        out.write(data)


@dataclass(frozen=True)
class Signer:
    """A loaded private key that signs version metadata.

    Attributes:
        path: The PEM file it was read from.
        key_id: The id of its public key, recorded in every signature.
    """

    path: Path
    key_id: str
    _key: Ed25519PrivateKey

    def sign(self, metadata: Any) -> dict[str, str]:
        """The ``signature.json`` content for ``metadata`` (the parsed metadata.json content)."""
        signature = self._key.sign(canonical_json(metadata))
        return {"alg": _ALG, "key_id": self.key_id, "signature": base64.b64encode(signature).decode("ascii")}


def load_signer(path: str | os.PathLike[str] | None, *, source: str = "signing_key=") -> Signer | None:
    """Load a private key; ``None`` reads ``$RAYMLOPS_SIGNING_KEY``, and an empty value means no signing.

    Raises:
        StoreConfigError: The file is missing, encrypted or not an Ed25519 private key.
    """
    if path is None:
        path, source = os.environ.get(SIGNING_KEY_ENV) or None, SIGNING_KEY_ENV
    if path is None or str(path) == "":
        return None
    file = Path(path).expanduser()
    data = _read_key_file(file, "signing key", source)
    if os.name == "posix" and file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("signing key %s can be read by other users; chmod 600 it", file)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as err:
        raise StoreConfigError(
            f"signing key {file} (from {source}) is encrypted; raymlops needs an unencrypted PEM key "
            "readable only by its owner (make one with `raymlops keys generate --out DIR`)"
        ) from err
    except ValueError as err:
        raise StoreConfigError(
            f"signing key {file} (from {source}) is not a PEM private key: {err}; make one with "
            "`raymlops keys generate --out DIR`"
        ) from err
    if not isinstance(key, Ed25519PrivateKey):
        raise StoreConfigError(
            f"signing key {file} (from {source}) is a {type(key).__name__}, not an Ed25519 key; make one "
            "with `raymlops keys generate --out DIR`"
        )
    return Signer(path=file, key_id=key_id(key.public_key()), _key=key)


def _read_key_file(file: Path, what: str, source: str) -> bytes:
    try:
        return file.read_bytes()
    except OSError as err:
        raise StoreConfigError(f"cannot read the {what} file {file} named by {source}: {err}") from err


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a reader accepts signatures from.

    Attributes:
        keys: key id -> public key.
        source: Where they were configured (the env var or ``trusted_keys=``), for error messages.
    """

    keys: dict[str, Ed25519PublicKey]
    source: str

    def check(self, name: str, version: int, metadata: dict[str, Any], signature_raw: bytes | None) -> str:
        """Verify one version's signature; return the id of the key that signed it.

        Raises:
            SignatureError: Unsigned, signed by an unknown key, malformed, not matching the metadata,
                or metadata that names another model or version than where it was found.
        """
        where = f"model {name!r} version {version}"
        if signature_raw is None:
            raise SignatureError(
                f"{where} is not signed (no {SIGNATURE_FILE}) and trusted keys are configured "
                f"({self.source}), so it is refused. Register it again with {SIGNING_KEY_ENV} set to a "
                f"private key whose public key is trusted, or unset {TRUSTED_KEYS_ENV} to load unsigned "
                "versions"
            )
        parsed = _parse_signature(where, signature_raw)
        kid, signature = parsed
        key = self.keys.get(kid)
        if key is None:
            raise SignatureError(
                f"{where} is signed by key {kid}, which is not trusted (trusted key ids: "
                f"{', '.join(sorted(self.keys))}; from {self.source}), so it is refused. If you trust that "
                f"key, add its public PEM file to {TRUSTED_KEYS_ENV}"
            )
        try:
            key.verify(signature, canonical_json(metadata))
        except InvalidSignature:
            raise SignatureError(
                f"the signature of {where} by key {kid} does not match its metadata.json: the metadata "
                "(file digests, metrics or gate outcome) was changed after it was signed, so it is refused "
                "and none of its files were read. Register the model again from its source"
            ) from None
        if metadata.get("name") != name or metadata.get("version") != version:
            raise SignatureError(
                f"{where} holds the signed metadata of {metadata.get('name')!r} version "
                f"{metadata.get('version')!r} (key {kid}): a signed version was copied or renamed, so it is "
                "refused. Load the version under its own name and number"
            )
        return kid


def _parse_signature(where: str, raw: bytes) -> tuple[str, bytes]:
    try:
        body = json.loads(raw.decode("utf-8"))
        alg, kid, text = body["alg"], body["key_id"], body["signature"]
        if alg != _ALG or not isinstance(kid, str) or not isinstance(text, str):
            raise ValueError(f"alg {alg!r}")
        return kid, base64.b64decode(text, validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError) as err:
        raise SignatureError(
            f"{SIGNATURE_FILE} of {where} is not an {_ALG} signature file ({err}), so it is refused. "
            "Register the model again with a signing key"
        ) from None


def load_trusted_keys(
    paths: Sequence[str | os.PathLike[str]] | None, *, source: str = "trusted_keys="
) -> TrustedKeys | None:
    """Load public keys; ``None`` reads ``$RAYMLOPS_TRUSTED_KEYS``; no keys at all means no checking.

    A variable that is set but names no file (only separators) is an error rather than silently
    turning verification off.

    Raises:
        StoreConfigError: A file is missing or is not an Ed25519 public key.
    """
    if paths is None:
        raw = os.environ.get(TRUSTED_KEYS_ENV, "")
        if not raw.strip():
            return None
        paths = [p for p in raw.split(os.pathsep) if p.strip()]
        source = TRUSTED_KEYS_ENV
        if not paths:
            raise StoreConfigError(f"{TRUSTED_KEYS_ENV}={raw!r} names no key file")
    if not paths:
        return None
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        file = Path(path).expanduser()
        data = _read_key_file(file, "trusted public key", source)
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as err:
            raise StoreConfigError(
                f"trusted key {file} (from {source}) is not a PEM public key: {err}. Use the .pub.pem file "
                "written by `raymlops keys generate`"
            ) from err
        if not isinstance(key, Ed25519PublicKey):
            raise StoreConfigError(
                f"trusted key {file} (from {source}) is a {type(key).__name__}, not an Ed25519 public key"
            )
        keys[key_id(key)] = key
    return TrustedKeys(keys=keys, source=source)
