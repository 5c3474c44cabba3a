"""Model references: ``NAME`` (its champion), ``NAME:VERSION`` and ``NAME@ALIAS``.

The same grammar is used by the CLI, the pipeline file and the serving config, so it lives in one
place and rejects malformed input with a message that says which of the three forms was expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._errors import InvalidNameError

__all__ = ["ALIAS_RE", "DEFAULT_ALIAS", "NAME_RE", "ModelRef", "parse_ref"]

#: Model names become folder names on every filesystem (and URL path segments in serving).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Aliases start with a letter so that ``NAME@3`` is never mistaken for a version number.
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
#: What a bare ``NAME`` resolves to.
DEFAULT_ALIAS = "champion"

_REF_FORMS = "expected NAME, NAME:VERSION (VERSION a positive integer) or NAME@ALIAS"


def _check_name(name: str, ref: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise InvalidNameError(
            f"invalid model reference {ref!r}: model name {name!r} must match {NAME_RE.pattern} "
            f"(letters, digits, '_', '.', '-'; at most 64 characters); {_REF_FORMS}"
        )


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference to one version of a model.

    At most one of ``version`` and ``alias`` is set; with neither, the reference means the
    model's ``champion`` alias.

    Attributes:
        name: The model name.
        version: An explicit version number, or None.
        alias: An alias such as ``challenger``, or None.
    """

    name: str
    version: int | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        """Reject references that no store could resolve, at construction time."""
        _check_name(self.name, str(self.name))
        if self.version is not None and self.alias is not None:
            raise InvalidNameError(
                f"model reference for {self.name!r} gives both version {self.version} and "
                f"alias {self.alias!r}; give one"
            )
        if self.version is not None and (
            isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1
        ):
            raise InvalidNameError(
                f"model reference for {self.name!r}: version must be a positive integer, got {self.version!r}"
            )
        if self.alias is not None and not ALIAS_RE.fullmatch(self.alias):
            raise InvalidNameError(
                f"model reference for {self.name!r}: alias {self.alias!r} must match {ALIAS_RE.pattern}"
            )

    def __str__(self) -> str:
        """Render the reference in the form :func:`parse_ref` reads back."""
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def parse_ref(ref: str) -> ModelRef:
    """Parse ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` into a :class:`ModelRef`.

    Args:
        ref: The reference as typed by a user; surrounding whitespace is ignored.

    Returns:
        The parsed reference.

    Raises:
        InvalidNameError: The text is none of the three forms; the message shows the offending part.
    """
    if not isinstance(ref, str):
        raise InvalidNameError(f"invalid model reference {ref!r}: not a string; {_REF_FORMS}")
    text = ref.strip()
    if not text:
        raise InvalidNameError(f"invalid model reference {ref!r}: empty; {_REF_FORMS}")
    if ":" in text and "@" in text:
        raise InvalidNameError(
            f"invalid model reference {ref!r}: give a version or an alias, not both; {_REF_FORMS}"
        )
    if ":" in text:
        name, _, version_text = text.partition(":")
        _check_name(name, ref)
        if not version_text.isascii() or not version_text.isdigit() or int(version_text) < 1:
            raise InvalidNameError(
                f"invalid model reference {ref!r}: version {version_text!r} is not a positive integer; "
                f"{_REF_FORMS}"
            )
        return ModelRef(name=name, version=int(version_text))
    if "@" in text:
        name, _, alias = text.partition("@")
        _check_name(name, ref)
        if not ALIAS_RE.fullmatch(alias):
            raise InvalidNameError(
                f"invalid model reference {ref!r}: alias {alias!r} must match {ALIAS_RE.pattern}; "
                f"{_REF_FORMS}"
            )
        return ModelRef(name=name, alias=alias)
    _check_name(text, ref)
    return ModelRef(name=text)
