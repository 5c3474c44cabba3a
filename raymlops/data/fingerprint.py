"""A content hash of the input data, recorded as lineage of every model version."""

from __future__ import annotations

import hashlib

import pandas as pd

__all__ = ["fingerprint_frame"]


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """sha256 over column names, dtypes and every cell; independent of the pandas index."""
    digest = hashlib.sha256()
    for name, dtype in frame.dtypes.items():
        digest.update(f"{name}:{dtype};".encode())
    row_hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest.update(row_hashes.tobytes())
    return digest.hexdigest()
