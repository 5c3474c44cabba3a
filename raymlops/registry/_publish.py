"""Allocating a version number and publishing a staged version, safely with concurrent writers.

The same code runs on local disks and object stores:

1. The caller has uploaded every model file into a hidden ``.staging-<uuid>`` folder that only it
   knows about.
2. It takes a number with :func:`raymlops.storage.try_claim` on ``.claims/<N>``: the claim protocol
   lets at most one writer win ``N`` even on S3/GCS, which have no conditional put or atomic
   rename. Losers move on to ``N+1`` after a short random pause. A won claim is never removed: a
   writer that crashes after winning just leaves ``N`` unused (a gap), never blocks anybody.
3. The winner moves its files from staging into ``<N>/`` one by one (a rename on local disks,
   pyarrow's copy-and-delete on object stores), then ``signature.json``, then ``metadata.json``
   last. Readers count a folder as a version only once ``metadata.json`` is there, and a move of a
   single file publishes it whole, so nobody ever sees half a version.
4. If anything fails while moving, the writer deletes exactly the objects it moved into ``<N>/``
   (it owns ``N`` through its claim, and it never deletes by folder) and its staging folder; it
   can never hit a version another writer published.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pyarrow.fs as pafs

from raymlops import storage

from . import _fsutil
from ._errors import RegistryConflictError

__all__ = ["CLAIMS_DIR", "claimed_numbers", "publish"]

log = logging.getLogger(__name__)

CLAIMS_DIR = ".claims"
METADATA_FILE = "metadata.json"
_MAX_ATTEMPTS = 100


def _numbers_in(fs: pafs.FileSystem, folder: str) -> list[int]:
    return [
        int(info.base_name)
        for info in _fsutil.list_children(fs, folder)
        if info.type == pafs.FileType.Directory and info.base_name.isascii() and info.base_name.isdigit()
    ]


def claimed_numbers(fs: pafs.FileSystem, model_path: str) -> list[int]:
    """Every number that is taken or was ever tried: version folders and claim folders alike."""
    return sorted(
        set(_numbers_in(fs, model_path)) | set(_numbers_in(fs, _fsutil.join_path(model_path, CLAIMS_DIR)))
    )


def _allocate(fs: pafs.FileSystem, model_path: str, owner: str) -> int:
    """Win a version number through the claim protocol; see the module docstring."""
    candidate = 0
    for attempt in range(_MAX_ATTEMPTS):
        candidate = max(candidate, max(claimed_numbers(fs, model_path), default=0)) + 1
        folder = _fsutil.join_path(model_path, CLAIMS_DIR, str(candidate))
        if storage.try_claim(fs, folder, owner=owner) is None:
            time.sleep(random.uniform(0, 0.01 * min(attempt + 1, 20)))
            continue
        if _fsutil.exists(fs, _fsutil.join_path(model_path, str(candidate))):
            # A folder written without a claim (an older raymlops): leave it alone, number burned.
            log.warning(
                "version folder %s/%d exists without a claim; skipping that number", model_path, candidate
            )
            continue
        return candidate
    raise RegistryConflictError(
        f"could not take a version number in {model_path}: {_MAX_ATTEMPTS} numbers in a row were taken by "
        "concurrent writers; try again"
    )


def _move_in(fs: pafs.FileSystem, staging: str, target: str, rels: list[str], moved: list[str]) -> None:
    made: set[str] = set()
    for rel in rels:
        dest = _fsutil.join_path(target, rel)
        parent = dest.rsplit("/", 1)[0]
        if parent not in made:
            fs.create_dir(parent, recursive=True)
            made.add(parent)
        fs.move(_fsutil.join_path(staging, rel), dest)
        moved.append(dest)


def _undo(fs: pafs.FileSystem, target: str, moved: list[str]) -> None:
    """Delete what this writer moved into ``target`` (nothing else), then the folder if it is empty."""
    for path in reversed(moved):
        _fsutil.remove_quietly(fs, path)
    try:
        if not any(i.type == pafs.FileType.File for i in _fsutil.list_children(fs, target, recursive=True)):
            fs.delete_dir(target)
    except Exception as err:  # cleanup only; the folder has no metadata.json and stays invisible
        log.debug("could not remove the empty folder %s: %s", target, err)


def publish(
    fs: pafs.FileSystem,
    model_path: str,
    staging: str,
    rels: list[str],
    metadata: dict[str, Any],
    finish: Callable[[dict[str, Any]], list[str]],
) -> int:
    """Take the next version number and move the staged files in, ``metadata.json`` last.

    Args:
        fs: The store's filesystem.
        model_path: ``<store>/models/<name>``.
        staging: The staging folder holding the model files.
        rels: The model files' paths relative to ``staging``.
        metadata: Updated in place with ``version`` and ``created_at`` once the number is won.
        finish: Called with the final metadata; writes ``signature.json`` (optional) and
            ``metadata.json`` into the staging folder and returns their relative paths in the order
            they are to be published (metadata.json last).

    Returns:
        The version number now published.
    """
    owner = f"register by {socket.gethostname()}:{os.getpid()}"
    version = _allocate(fs, model_path, owner)
    metadata["version"] = version
    metadata["created_at"] = datetime.now(timezone.utc).isoformat()
    target = _fsutil.join_path(model_path, str(version))
    moved: list[str] = []
    try:
        last = finish(metadata)
        _move_in(fs, staging, target, [*rels, *last], moved)
    except BaseException as err:
        if _fsutil.exists(fs, _fsutil.join_path(target, METADATA_FILE)):
            # The final move landed (an object store's copy did) and only its clean-up failed: the
            # version is published and complete, so it must not be taken apart again.
            if isinstance(err, Exception):
                log.warning("version %s was published, but cleaning up after it failed: %s", target, err)
                return version
            raise
        _undo(fs, target, moved)
        raise
    return version
