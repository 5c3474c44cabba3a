"""Small helpers over :mod:`pyarrow.fs`, shared by the store.

Everything here goes through pyarrow's filesystem API so the same code serves a local folder, a
``file://`` URI and object stores such as ``s3://`` or ``gs://``. Streams are always opened with
``compression=None``: pyarrow's default ("detect") would silently gunzip a model file named
``*.gz`` on read, and the sha256 sums would then describe bytes that are not on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from raymlops import storage

from ._errors import RegistryError

__all__ = [
    "CHUNK_SIZE",
    "exists",
    "join_path",
    "join_uri",
    "list_children",
    "local_sha256",
    "dump_json",
    "read_bytes",
    "read_json",
    "remove_quietly",
    "stream_sha256",
    "upload_file",
    "write_bytes",
    "write_bytes_atomic",
    "write_json",
    "write_json_atomic",
]

#: Read and write in 1 MiB chunks: large enough for throughput, small enough for any worker's memory.
CHUNK_SIZE = 1 << 20


def join_path(base: str, *parts: str) -> str:
    """Join a filesystem path (as pyarrow sees it) with ``/``-separated parts."""
    base = base.rstrip("/") if base not in ("", "/") else base
    return posixpath.join(base, *parts) if base else "/".join(parts)


def join_uri(uri: str, *parts: str) -> str:
    """Append path parts to a store URI, keeping any scheme and query string (see :func:`storage.join`)."""
    return storage.join(uri, *parts)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """Whether a file or folder exists at ``path``."""
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def list_children(fs: pafs.FileSystem, path: str, recursive: bool = False) -> list[pafs.FileInfo]:
    """List what is under ``path``; an absent folder is empty rather than an error."""
    return list(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=recursive)))


def read_json(fs: pafs.FileSystem, path: str, what: str) -> Any:
    """Read one JSON file.

    Args:
        fs: The filesystem.
        path: The file's path on ``fs``.
        what: How to describe the file in errors (e.g. ``"metadata.json of digits:3"``).

    Raises:
        FileNotFoundError: The file does not exist.
        RegistryError: The file is not valid JSON; the message names it.
    """
    with fs.open_input_stream(path, compression=None) as stream:
        raw = stream.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{what} ({path}) is not valid JSON: {exc}") from exc


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def dump_json(obj: Any) -> bytes:
    """The bytes every registry JSON file is written as (indented, sorted keys, trailing newline)."""
    return _dump(obj)


def write_json(fs: pafs.FileSystem, path: str, obj: Any) -> None:
    """Write a JSON file in one go (for files nobody else can see yet, such as staging metadata)."""
    write_bytes(fs, path, _dump(obj))


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a file in one go (for files nobody else can see yet)."""
    with fs.open_output_stream(path, compression=None) as stream:
        stream.write(data)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """Read a whole (small) file; raises FileNotFoundError when absent."""
    with fs.open_input_stream(path, compression=None) as stream:
        return bytes(stream.read())


def write_json_atomic(fs: pafs.FileSystem, path: str, obj: Any) -> None:
    """Replace a JSON file so readers see either the old or the new content, never half of one."""
    write_bytes_atomic(fs, path, _dump(obj))


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Replace a file so readers see either the old or the new content, never half of one.

    The content goes to a uniquely named temporary file beside the target, which is then moved
    over it (a rename on local disks; on object stores pyarrow's move is a copy and a delete, and
    the copy publishes the whole object at once).
    """
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(tmp, compression=None) as stream:
            stream.write(data)
        fs.move(tmp, path)
    except BaseException:
        remove_quietly(fs, tmp)
        raise


def remove_quietly(fs: pafs.FileSystem, path: str) -> None:
    """Delete a file or folder if it is there, ignoring errors: used only on cleanup paths."""
    with contextlib.suppress(Exception):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type != pafs.FileType.NotFound:
            fs.delete_file(path)


def upload_file(fs: pafs.FileSystem, local_path: str | os.PathLike[str], dest: str) -> str:
    """Copy a local file to ``dest`` on ``fs`` and return the sha256 of the bytes written.

    Hashing while copying means each byte is read once and the recorded sum describes exactly what
    was uploaded, even if the source changes afterwards.
    """
    digest = hashlib.sha256()
    with open(local_path, "rb") as src, fs.open_output_stream(dest, compression=None) as out:
        while chunk := src.read(CHUNK_SIZE):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def stream_sha256(fs: pafs.FileSystem, path: str) -> str:
    """The sha256 of a file on ``fs``, read in chunks."""
    digest = hashlib.sha256()
    with fs.open_input_stream(path, compression=None) as stream:
        while chunk := stream.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def local_sha256(path: Path) -> str:
    """The sha256 of a local file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()
