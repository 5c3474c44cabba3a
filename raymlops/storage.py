"""Where raymlops keeps files: one small API over pyarrow filesystems, local disks and object stores alike.

Everything that reads or writes a store, a dataset or an output goes through these few names, so
that a plain path, ``file://``, ``s3://``, ``gs://`` and any other pyarrow URI behave the same:

``resolve(uri) -> (filesystem, path)``
    Open the pyarrow filesystem a path or URI lives on. Query parameters are passed to pyarrow
    (``s3://bucket/p?endpoint_override=127.0.0.1:9000&scheme=http&region=eu-west-1``).
``is_local(uri) -> bool``
    Whether it is a plain path or ``file://`` URI (local rename is atomic; object stores have none).
``join(uri, *parts) -> str``
    Append ``/``-separated parts, keeping the scheme and query string.
``LeaseLock(fs, path, lease_s=30)``
    A mutual-exclusion lock that works on object stores: ``with LeaseLock(fs, path): ...``. Raises
    :class:`raymlops.errors.ConflictError` when another live holder keeps it past ``timeout_s``.
``try_claim(fs, folder) -> str | None``
    Take a name once and for all (e.g. a version number); the building block of both.

Why a claim protocol: S3 and GCS through pyarrow have no conditional put and no atomic rename, but
both give strong read-after-write and list-after-write consistency. A writer that wants ``folder``
writes a uniquely named claim object into it, then lists it, and wins only if its claim is the only
one listed. If two writers each saw only themselves, one of them must have listed before the other
wrote its claim, and that listing happened after its own claim was written, which the other would
then have seen: so at most one wins. Several claims seen means everybody loses and retries (a
loser removes its claim). A winner's claim is never removed by :func:`try_claim`; a
:class:`LeaseLock` holder removes it on release, and claims not refreshed for ``lease_s`` seconds are
treated as dead (their owner crashed) and removed by the next contender, so a crash never blocks
anybody for longer than one lease. Staleness is judged against the storage's own clock (the
modification time of the contender's fresh claim), never the local clock, so machines with skewed
clocks agree.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import random
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from raymlops.errors import ConflictError

__all__ = ["LeaseLock", "is_local", "join", "resolve", "try_claim"]

log = logging.getLogger(__name__)

_CLAIM_SUFFIX = ".claim.json"


def is_local(uri: str) -> bool:
    """Whether ``uri`` is a plain local path or a ``file://`` URI."""
    if "://" not in uri:
        return True
    return urlsplit(uri).scheme.lower() in ("file", "local")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Open the filesystem ``uri`` lives on and return it with the path inside it.

    Plain paths are made absolute (``~`` expanded) so Ray workers with another working directory
    agree. URIs go to :meth:`pyarrow.fs.FileSystem.from_uri`, which reads query parameters such as
    ``endpoint_override``, ``scheme``, ``region`` or ``allow_bucket_creation`` for ``s3://``.

    Args:
        uri: A path or any URI pyarrow understands.

    Returns:
        ``(filesystem, path)``; the path has no trailing ``/`` (except a bare root).
    """
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path.rstrip("/") or path


def join(uri: str, *parts: str) -> str:
    """Append ``/``-separated ``parts`` to a path or URI, keeping its scheme and query string.

    ``join("s3://b/store?region=x", "models", "m")`` is ``"s3://b/store/models/m?region=x"``; a
    plain path (or a path inside a filesystem returned by :func:`resolve`) is joined with ``/``.
    """
    if "://" not in uri:
        return _join_path(uri, *parts)
    split = urlsplit(uri)
    return urlunsplit(split._replace(path=_join_path(split.path or "/", *parts)))


def _join_path(base: str, *parts: str) -> str:
    base = base.rstrip("/") if base not in ("", "/") else base
    return posixpath.join(base, *parts) if base else "/".join(parts)


# ------------------------------------------------------------------------------------------ claims


def _claim_body(owner: str | None) -> bytes:
    body = {
        "owner": owner or f"{socket.gethostname()}:{os.getpid()}",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "written_at": datetime.now(timezone.utc).isoformat(),
    }
    return json.dumps(body, sort_keys=True).encode("utf-8")


def _write_claim(fs: pafs.FileSystem, path: str, owner: str | None) -> None:
    with fs.open_output_stream(path, compression=None) as stream:
        stream.write(_claim_body(owner))


def _list_claims(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(folder, allow_not_found=True)
    return [
        info
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File and info.base_name.endswith(_CLAIM_SUFFIX)
    ]


def _delete_quietly(fs: pafs.FileSystem, path: str) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_file(path)


def _new_claim(fs: pafs.FileSystem, folder: str, owner: str | None) -> str:
    fs.create_dir(folder, recursive=True)
    path = _join_path(folder, f"{uuid.uuid4().hex}{_CLAIM_SUFFIX}")
    _write_claim(fs, path, owner)
    return path


def try_claim(fs: pafs.FileSystem, folder: str, *, owner: str | None = None) -> str | None:
    """Try once to take ``folder`` for good; return the winning claim's path, or None if taken.

    A lost attempt removes its own claim; a won claim stays forever (it is what keeps the name
    taken), so a writer that crashes after winning just leaves the name unused. See the module
    docstring for why at most one writer ever wins.

    Args:
        fs: The filesystem.
        folder: A folder that stands for the name being claimed (e.g. ``.claims/7``).
        owner: Who claims (written into the claim for people inspecting the store).
    """
    mine = _new_claim(fs, folder, owner)
    seen = [info.base_name for info in _list_claims(fs, folder)]
    if seen == [posixpath.basename(mine)]:
        return mine
    _delete_quietly(fs, mine)
    return None


def _describe_claim(fs: pafs.FileSystem, path: str) -> str:
    try:
        with fs.open_input_stream(path, compression=None) as stream:
            body = json.loads(stream.read().decode("utf-8"))
        where = f"pid {body.get('pid')} on {body.get('host')}"
        return f"{body.get('owner')} ({where}, since {body.get('written_at')})"
    except Exception:  # a claim removed meanwhile or written by something else: name the file only
        return path


class LeaseLock:
    """An exclusive lock held through a claim with a lease, usable on any pyarrow filesystem.

    Example::

        fs, root = storage.resolve(output_uri)
        with LeaseLock(fs, storage.join(root, "_lock"), timeout_s=0):   # refuse a second writer
            ...

    While held, a background thread refreshes the claim every ``lease_s / 3`` seconds, so a long
    holder keeps it; a holder that dies (even ``kill -9``) stops refreshing and its claim is removed
    by the first contender that finds it older than ``lease_s`` on the storage's clock. If a holder
    is paused longer than a lease and finds its claim gone, :attr:`lost` becomes True and a warning
    is logged.

    Args:
        fs: The filesystem.
        path: A folder reserved for this lock (its claims are the only files in it).
        lease_s: How long a claim lives without a refresh before others may take over.
        timeout_s: How long :meth:`acquire` keeps trying while another live holder has the lock;
            ``0`` tries once. Defaults to twice the lease, so a crashed holder's lock is taken over.
        owner: A label for the holder, shown in other contenders' error messages.

    Raises:
        ConflictError: From :meth:`acquire` / ``with``: the lock stayed held for ``timeout_s``; the
            message names the holder.
    """

    def __init__(
        self,
        fs: pafs.FileSystem,
        path: str,
        lease_s: float = 30.0,
        *,
        timeout_s: float | None = None,
        owner: str | None = None,
    ) -> None:
        if lease_s <= 0:
            raise ValueError(f"LeaseLock lease_s must be positive, got {lease_s}")
        self.fs = fs
        self.path = path
        self.lease_s = float(lease_s)
        self.timeout_s = 2 * self.lease_s if timeout_s is None else max(0.0, float(timeout_s))
        self.owner = owner
        self.lost = False
        self._claim: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._claim is not None and not self.lost

    def __enter__(self) -> LeaseLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout_s`` while a live holder has it."""
        if self._claim is not None:
            raise RuntimeError(f"LeaseLock {self.path} is already held by this object")
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        while True:
            holder = self._attempt()
            if holder is None:
                break
            attempt += 1
            if time.monotonic() >= deadline:
                raise ConflictError(
                    f"lock {self.path} is held by {_describe_claim(self.fs, holder)}; gave up after "
                    f"{self.timeout_s:g}s. If that process is gone, its lease expires {self.lease_s:g}s "
                    "after its last refresh and the lock can then be taken"
                )
            time.sleep(
                min(random.uniform(0.01, 0.05) * min(attempt, 10), max(0.0, deadline - time.monotonic()))
            )
        self.lost = False
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease:{self.path}", daemon=True)
        self._thread.start()

    def _attempt(self) -> str | None:
        """One claim-and-list round: None when won, else the path of a live rival claim."""
        mine = _new_claim(self.fs, self.path, self.owner)
        claims = _list_claims(self.fs, self.path)
        mine_name = posixpath.basename(mine)
        own = next((c for c in claims if c.base_name == mine_name), None)
        if own is None or own.mtime is None:  # cannot judge without our own timestamp: retry
            _delete_quietly(self.fs, mine)
            return mine
        now = own.mtime.timestamp()
        rivals = []
        for claim in claims:
            if claim.base_name == mine_name:
                continue
            if claim.mtime is not None and now - claim.mtime.timestamp() > self.lease_s:
                log.warning("removing the expired claim %s on lock %s", claim.path, self.path)
                _delete_quietly(self.fs, claim.path)
                continue
            rivals.append(claim.path)
        if rivals:
            _delete_quietly(self.fs, mine)
            return rivals[0]
        self._claim = mine
        return None

    def refresh(self) -> None:
        """Renew the lease now (the heartbeat does this on its own); marks :attr:`lost` if it is gone."""
        claim = self._claim
        if claim is None:
            return
        if self.fs.get_file_info(claim).type == pafs.FileType.NotFound:
            if not self.lost:
                log.warning("lock %s was taken over: its claim %s expired and was removed", self.path, claim)
            self.lost = True
            return
        _write_claim(self.fs, claim, self.owner)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.refresh()
            except Exception as err:  # a storage hiccup: try again at the next beat
                log.warning("could not refresh lock %s: %s", self.path, err)

    def release(self) -> None:
        """Give the lock up (removes the claim unless it was lost); safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        claim, self._claim = self._claim, None
        if claim is not None and not self.lost:
            _delete_quietly(self.fs, claim)
