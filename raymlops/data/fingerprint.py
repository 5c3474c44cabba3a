"""A content hash of the input data, recorded as lineage of every model version.

It is computed from the profiling pass's sum of per-row hashes (see :mod:`raymlops.data.profile`):
a sum does not depend on the order rows arrive in, so the same data gives the same fingerprint
whatever its block layout, file split or worker count, and no task needs to see another's rows.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import pyarrow as pa

from raymlops.data.profile import ProfileSpec, SourceProfile

__all__ = ["fingerprint_frame", "fingerprint_profile"]


def fingerprint_profile(profile: SourceProfile) -> str:
    """sha256 over the column names, their type families, the row count and the row-hash sum."""
    digest = hashlib.sha256()
    for name, col in profile.columns.items():
        digest.update(f"{name}:{col.kind};".encode())
    digest.update(f"rows={profile.rows};hash={profile.hash_sum:016x}".encode())
    return digest.hexdigest()


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """The fingerprint an in-memory frame gets (the same as the files holding the same rows)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return fingerprint_profile(SourceProfile.of_table(table, ProfileSpec(target="")))
