"""Errors raised for bad input data: each names the file, column and value at fault.

They live in :mod:`raymlops.errors` (the one exception tree); this module re-exports them for
the data package.
"""

from __future__ import annotations

from raymlops.errors import DataError, DataValidationError

__all__ = ["DataError", "DataValidationError"]
