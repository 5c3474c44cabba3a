"""Exceptions raised by the model registry, on the tree of :mod:`raymlops.errors`.

Every message names the model, the version and, where one is involved, the file, because the person
reading it is usually looking at a CLI error or a serving log and has no debugger attached.
"""

from __future__ import annotations

from raymlops.errors import ConfigError, ConflictError, NotFoundError, TrustError, UserError

__all__ = [
    "IntegrityError",
    "InvalidNameError",
    "InvalidRegistrationError",
    "ModelNotFoundError",
    "RegistryConflictError",
    "RegistryError",
    "SignatureError",
    "StoreConfigError",
]


class RegistryError(UserError):
    """Base class for every registry failure, so callers can catch them all at once."""

    http_status = 500


class InvalidNameError(RegistryError, ConfigError):
    """A model name, alias or reference that does not match the allowed pattern."""

    http_status = 400


class InvalidRegistrationError(RegistryError):
    """What was given to ``register`` cannot become a version (empty folder, reserved names or keys)."""

    http_status = 400


class StoreConfigError(RegistryError, ConfigError):
    """The store is configured wrongly: an unreadable or wrong key file, a filesystem without a root."""

    http_status = 400


class ModelNotFoundError(RegistryError, NotFoundError):
    """An unknown model, version or alias; the message lists what does exist to spot the typo."""

    http_status = 404


class RegistryConflictError(RegistryError, ConflictError):
    """Another writer got there first: an alias moved since it was read, a key file exists, a lock is held."""

    http_status = 409


class IntegrityError(RegistryError, TrustError):
    """A version's files do not match the sha256 sums recorded when it was registered.

    Raised for a changed byte, a missing file or a file that was never registered (a planted file
    is as dangerous as a changed one when loaders read whatever they find).
    """

    http_status = 403


class SignatureError(IntegrityError):
    """With trusted keys configured, a version is unsigned, signed by an untrusted key or tampered with.

    Raised before any model file is read, so nothing of a refused version is ever loaded.
    """

    http_status = 403
