"""Terminal output rules: results on stdout, everything else (logs, progress, tables) on stderr."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console

__all__ = ["err_console", "json_stdout", "print_json"]

err_console = Console(stderr=True)


@contextlib.contextmanager
def json_stdout(enabled: bool) -> Iterator[None]:
    """While enabled, send everything written to stdout (Ray, Tune, C libraries) to stderr.

    ``--json`` promises one JSON object on stdout and nothing else; Tune's progress tables and
    Ray's worker logs write to stdout at the file-descriptor level, so redirect the descriptor.
    """
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()
