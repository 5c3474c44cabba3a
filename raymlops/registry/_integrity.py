"""Checking a version's bytes against its recorded sums, and remembering versions that failed.

The negative cache: a champion whose files do not match its sums would otherwise be downloaded
again by every replica on every poll, forever. :class:`FailedFetches` remembers, per process, each
(store, name, version, sha256 of metadata.json) whose download failed verification, and for
:data:`NEGATIVE_TTL_S` seconds a fetch of exactly that version fails at once, without downloading a
byte. Keying on the metadata digest means a version re-registered or repaired with new metadata is
tried again immediately; the time limit means one repaired in place (its files restored) is picked
up again after a few minutes. The cache holds at most :data:`NEGATIVE_MAX` entries.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from . import _fsutil
from ._errors import IntegrityError

if TYPE_CHECKING:
    from ._store import ModelVersion

__all__ = [
    "NEGATIVE_MAX",
    "NEGATIVE_TTL_S",
    "FailedFetches",
    "compare",
    "integrity_message",
    "is_earlier_registration",
    "local_files",
    "verify_local",
    "verify_local_or_remove",
]

METADATA_FILE = "metadata.json"
SIGNATURE_FILE = "signature.json"
#: Files of a version folder that are not in ``files`` because they describe the others.
_SELF_DESCRIBING = frozenset({METADATA_FILE, SIGNATURE_FILE})
#: How long a version that failed verification is refused without downloading it again.
NEGATIVE_TTL_S = 300.0
#: How many failed versions are remembered per process.
NEGATIVE_MAX = 256


def local_files(root: Path) -> list[tuple[str, Path]]:
    """Every file under ``root`` as (posix relative path, absolute path), sorted for determinism."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for filename in filenames:
            path = Path(dirpath) / filename
            found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


def compare(
    expected: dict[str, str], present: Mapping[str, object], sha_of: Callable[[str], str]
) -> list[str]:
    """Problems between the recorded sums and the files present (metadata/signature are not listed)."""
    problems: list[str] = []
    for rel in sorted(expected):
        if rel not in present:
            problems.append(f"file {rel!r} is missing")
            continue
        actual = sha_of(rel)
        if actual != expected[rel]:
            problems.append(f"file {rel!r} has sha256 {actual}, expected {expected[rel]}")
    for rel in sorted(set(present) - set(expected) - _SELF_DESCRIBING):
        problems.append(f"file {rel!r} is not part of the registered version")
    return problems


def integrity_message(mv: ModelVersion, location: str | Path, problems: list[str]) -> str:
    """One line naming the version, where it was checked and every problem found."""
    return f"integrity check failed for model {mv.name!r} version {mv.version} at {location}: " + "; ".join(
        problems
    )


def _read_local_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def verify_local(mv: ModelVersion, root: Path) -> list[str]:
    """Problems with a local copy: file sums, plus its metadata.json must equal the store's."""
    present = {rel: path for rel, path in local_files(root)}
    problems = compare(mv.files, present, lambda rel: _fsutil.local_sha256(present[rel]))
    if _read_local_json(root / METADATA_FILE) != mv.metadata:
        problems.append(f"file {METADATA_FILE!r} is missing or differs from the store's")
    return problems


def is_copy_of(root: Path, mv: ModelVersion) -> bool:
    """Whether a local folder was made by fetching ``mv`` (judged by its metadata.json only)."""
    meta = _read_local_json(root / METADATA_FILE)
    return isinstance(meta, dict) and meta.get("name") == mv.name and meta.get("version") == mv.version


def is_earlier_registration(root: Path, mv: ModelVersion) -> bool:
    """Whether a cached copy is of another registration under the same name and number.

    A store deleted and created again at the same URI numbers its versions from 1 again, so the
    cache may hold ``NAME/1`` of the old store. Its ``created_at`` differs from the store's: it is
    stale, not tampered with, and downloading afresh is the fix. (Replacing a copy is always safe;
    a copy of this very registration that does not match is still reported as tampering.)
    """
    meta = _read_local_json(root / METADATA_FILE)
    if not isinstance(meta, dict) or "created_at" not in mv.metadata:
        return False
    return meta.get("created_at") != mv.metadata["created_at"]


def verify_local_or_remove(mv: ModelVersion, root: Path) -> None:
    """Check an earlier local copy; a bad one is deleted so the next fetch downloads afresh."""
    problems = verify_local(mv, root)
    if problems:
        shutil.rmtree(root, ignore_errors=True)
        raise IntegrityError(
            integrity_message(mv, root, problems)
            + "; the local copy was removed, fetch again to download a fresh one"
        )


class FailedFetches:
    """The per-process negative cache of versions whose download failed verification (thread-safe)."""

    def __init__(self, ttl_s: float = NEGATIVE_TTL_S, max_entries: int = NEGATIVE_MAX) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str, int, str], tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, key: tuple[str, str, int, str], message: str) -> None:
        """Record that this exact version failed with ``message``."""
        with self._lock:
            self._entries[key] = (time.monotonic(), message)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def check(self, key: tuple[str, str, int, str]) -> None:
        """Raise the remembered failure again if it is recent enough.

        Raises:
            IntegrityError: This exact version failed verification less than ``ttl_s`` seconds ago.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            age = time.monotonic() - entry[0]
            if age > self.ttl_s:
                del self._entries[key]
                return
        raise IntegrityError(
            f"{entry[1]} (remembered: this exact version failed verification {age:.0f}s ago in this "
            f"process, so it is not downloaded again for {self.ttl_s:.0f}s; re-register or repair it)"
        )

    def clear(self) -> None:
        """Forget every failure (e.g. after repairing a store in place)."""
        with self._lock:
            self._entries.clear()


#: The process-wide negative cache used by :meth:`ModelStore.fetch`.
FAILED_FETCHES = FailedFetches()
