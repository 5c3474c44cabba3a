"""Versioned model store on any pyarrow filesystem (local path, ``file://``, ``s3://``, ``gs://``, ...).

One version is one folder, written once and published atomically, whose files are checked
against recorded sha256 sums before they are loaded and, with trusted keys, whose Ed25519
signature is checked before any of its files is read. Aliases (``champion``, ``challenger``, ...)
name versions and move by compare-and-swap; references are ``NAME`` (its champion),
``NAME:VERSION`` or ``NAME@ALIAS``. Concurrent writers are safe on object stores too.
"""

from ._errors import (
    IntegrityError,
    InvalidNameError,
    InvalidRegistrationError,
    ModelNotFoundError,
    RegistryConflictError,
    RegistryError,
    SignatureError,
    StoreConfigError,
)
from ._integrity import NEGATIVE_TTL_S
from ._refs import ModelRef, parse_ref
from ._signing import SIGNING_KEY_ENV, TRUSTED_KEYS_ENV, write_key_pair
from ._store import (
    ANY,
    CACHE_ENV,
    DEFAULT_STORE_ENV,
    ModelStore,
    ModelVersion,
    package_versions,
    resolve_store_uri,
)

__all__ = [
    "ANY",
    "CACHE_ENV",
    "DEFAULT_STORE_ENV",
    "NEGATIVE_TTL_S",
    "SIGNING_KEY_ENV",
    "TRUSTED_KEYS_ENV",
    "IntegrityError",
    "InvalidNameError",
    "InvalidRegistrationError",
    "ModelNotFoundError",
    "ModelRef",
    "ModelStore",
    "ModelVersion",
    "RegistryConflictError",
    "RegistryError",
    "SignatureError",
    "StoreConfigError",
    "package_versions",
    "parse_ref",
    "resolve_store_uri",
    "write_key_pair",
]
