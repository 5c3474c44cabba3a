"""Loading a raymlops version folder inside an exported MLflow model.

The folder travels as an MLflow artifact, outside the raymlops store, so its files are checked
against the sha256 sums in its own ``metadata.json`` before anything in it is loaded, as the
store's ``fetch`` does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from raymlops.errors import TrustError

__all__ = ["VERSION_ARTIFACT", "load_version", "verify_version_folder"]

#: The artifact key (and folder name) of the raymlops version inside the MLflow model.
VERSION_ARTIFACT = "raymlops_version"
_METADATA = "metadata.json"
_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_version_folder(folder: str | Path) -> dict[str, Any]:
    """The folder's metadata, after every file has matched its recorded sha256.

    Raises:
        TrustError: metadata.json is unreadable, or a file is missing, altered or unregistered.
    """
    root = Path(folder)
    try:
        metadata = json.loads((root / _METADATA).read_text(encoding="utf-8"))
        expected: dict[str, str] = dict(metadata["files"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TrustError(f"{root}: not a raymlops model version ({_METADATA}: {err})") from None
    present = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    problems = [f"{rel}: missing" for rel in sorted(set(expected) - set(present))]
    problems += [
        f"{rel}: sha256 differs from the recorded one"
        for rel in sorted(set(expected) & set(present))
        if _sha256(present[rel]) != expected[rel]
    ]
    problems += [
        f"{rel}: not part of the version" for rel in sorted(set(present) - set(expected) - {_METADATA})
    ]
    if problems:
        raise TrustError(f"model version in {root} failed its integrity check: " + "; ".join(problems))
    return metadata


def load_version(folder: str | Path) -> Any:
    """The verified version folder as a model that scores raw rows (``predict_frame``)."""
    metadata = verify_version_folder(folder)
    # The one place that names raymlops's scoring API (moving to raymlops.model, same methods).
    from raymlops.model import ModelBundle

    return ModelBundle.from_dir(Path(folder), metadata)
