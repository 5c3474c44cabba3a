"""Exceptions raised by the model registry.

Every message names the model, the version and, where one is involved, the file, because the person
reading it is usually looking at a CLI error or a serving log and has no debugger attached.
"""

from __future__ import annotations

__all__ = ["IntegrityError", "ModelNotFoundError", "RegistryError"]


class RegistryError(Exception):
    """Base class for every registry failure, so callers can catch them all at once."""


class ModelNotFoundError(RegistryError):
    """An unknown model, version or alias; the message lists what does exist to spot the typo."""


class IntegrityError(RegistryError):
    """A version's files do not match the sha256 sums recorded when it was registered.

    Raised for a changed byte, a missing file or a file that was never registered (a planted file
    is as dangerous as a changed one when loaders unpickle whatever they find).
    """
