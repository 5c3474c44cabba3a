"""The one exception tree of raymlops.

Every error raymlops raises on purpose derives from :class:`RaymlopsError`. The tree says who is at
fault, and that decides how the error is shown:

.. code-block:: text

    RaymlopsError                  a raymlops failure (http_status 500)
    ├── UserError                  the user's input is wrong or refused: shown as one message (400)
    │   ├── ConfigError            the pipeline file or a setting is invalid
    │   ├── DataError              a data source cannot be read as a table
    │   │   └── DataValidationError  the data breaks one or more checks (``problems``)
    │   ├── InputError             rows that cannot be scored at all (a missing feature column)
    │   ├── NotFoundError          an unknown model, version, alias, job or file (404)
    │   ├── ConflictError          the target is taken: existing output, a concurrent writer (409)
    │   ├── AuthError              a missing or wrong credential (401)
    │   ├── TrustError             a model version fails its integrity or signature check (403)
    │   └── ClusterError           a cluster or its jobs API refused or failed a request (502)
    └── (anything else)            a bug: the CLI shows its traceback

The CLI catches :class:`UserError` only, so a bug is never hidden behind a one-line message; the
serving application answers a ``UserError`` with its ``http_status`` and ``{"error": message}``.
Subpackages keep their historical names as subclasses (``ModelNotFoundError`` is a
``NotFoundError``, ``IntegrityError`` a ``TrustError``) so callers can catch either.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ClusterError",
    "ConfigError",
    "ConflictError",
    "DataError",
    "DataValidationError",
    "InputError",
    "NotFoundError",
    "RaymlopsError",
    "TrustError",
    "UserError",
]


class RaymlopsError(Exception):
    """Root of every error raymlops raises on purpose."""

    http_status: int = 500


class UserError(RaymlopsError):
    """Something the user (or a client) can fix: shown as a message, never as a traceback."""

    http_status = 400


class ConfigError(UserError):
    """The pipeline file or a setting is unreadable or does not match the schema."""


class DataError(UserError):
    """The data source cannot be read as a table (missing path, unknown format, empty)."""


class DataValidationError(DataError):
    """The data was read but breaks one or more checks; ``problems`` holds one line per check."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"data from {source} failed {len(self.problems)} check(s):\n{body}")


class InputError(UserError):
    """Input that cannot be scored at all (e.g. a feature column missing from the whole batch)."""


class NotFoundError(UserError):
    """An unknown model, version, alias, job or file; the message lists what does exist."""

    http_status = 404


class ConflictError(UserError):
    """The target is already taken: an earlier job's output, another writer holding a lock."""

    http_status = 409


class AuthError(UserError):
    """A missing or wrong credential (API key, cluster token)."""

    http_status = 401


class TrustError(UserError):
    """A model version fails its integrity or signature check and is not loaded."""

    http_status = 403


class ClusterError(UserError):
    """The cluster or its jobs API refused or failed a request."""

    http_status = 502
