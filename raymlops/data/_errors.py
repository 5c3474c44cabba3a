"""Errors raised for bad input data: each names the file, column and value at fault."""

from __future__ import annotations

__all__ = ["DataError", "DataValidationError"]


class DataError(ValueError):
    """The data source cannot be read as a table (missing path, unknown format, empty)."""


class DataValidationError(DataError):
    """The data was read but breaks one or more checks; ``problems`` holds one line per check."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        body = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"data from {source} failed {len(problems)} check(s):\n{body}")
