"""Versioned model store on any pyarrow filesystem (local path, ``file://``, ``s3://``, ``gs://``, ...).

One version is one folder, written once and published atomically, whose files are checked
against recorded sha256 sums before they are loaded. Aliases (``champion``, ``challenger``, ...)
name versions; references are ``NAME`` (its champion), ``NAME:VERSION`` or ``NAME@ALIAS``.
"""

from ._errors import IntegrityError, ModelNotFoundError, RegistryError
from ._refs import ModelRef, parse_ref
from ._store import (
    CACHE_ENV,
    DEFAULT_STORE_ENV,
    ModelStore,
    ModelVersion,
    package_versions,
    resolve_store_uri,
)

__all__ = [
    "CACHE_ENV",
    "DEFAULT_STORE_ENV",
    "IntegrityError",
    "ModelNotFoundError",
    "ModelRef",
    "ModelStore",
    "ModelVersion",
    "RegistryError",
    "package_versions",
    "parse_ref",
    "resolve_store_uri",
]
