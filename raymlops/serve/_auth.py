"""Bearer-token auth for inference and metadata endpoints.

Replicas hold only the sha256 of the key: the CLI passes the digest (never the key) into the
deployment's arguments, so the key does not end up in Serve's config, checkpoint or dashboard. A
replica started from a Serve config reads ``RAYMLOPS_API_KEY`` from its own environment instead.
Digests are compared with :func:`hmac.compare_digest`, in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = ["API_KEY_ENV", "ApiKeyCheck", "key_digest"]

API_KEY_ENV = "RAYMLOPS_API_KEY"


def key_digest(key: str) -> str:
    """Hex sha256 of an API key."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyCheck:
    """Decides whether a request's ``Authorization`` header carries the key.

    Args:
        digest: hex sha256 of the key; None reads ``$RAYMLOPS_API_KEY``; no key at all means open.
    """

    def __init__(self, digest: str | None = None) -> None:
        if digest is None:
            key = os.environ.get(API_KEY_ENV)
            digest = key_digest(key) if key else None
        self._digest = bytes.fromhex(digest) if digest else None

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def allows(self, authorization: str | None) -> bool:
        """Whether ``Authorization: Bearer <key>`` matches (always True when auth is off)."""
        if self._digest is None:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        # Compare digests even for a wrong scheme so timing says nothing about the key.
        return hmac.compare_digest(given, self._digest) and scheme.lower() == "bearer"
