"""Every command the README's CLI table documents exists: ``raymlops <command> --help`` exits 0.

The README is what a new user reads first; a documented command that answers "No such command"
(as ``submit`` and ``jobs`` once did) is a broken promise nobody notices without this test. The
table is parsed, not copied here, so a row added to the README is tested from then on.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_WORD = re.compile(r"[a-z][a-z0-9/_-]*")


def _cli_rows(readme: str) -> list[str]:
    """The first cell of every row of the table under ``## CLI``."""
    section = readme.split("\n## CLI", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells and "`" in cells[0]:
            rows.append(cells[0])
    return rows


def _commands(cell: str) -> list[tuple[str, ...]]:
    """``raymlops models list`` · ``models show REF`` · ``jobs list/status`` -> the command words.

    A span without the ``raymlops`` prefix continues the row's group (``models show REF``);
    ``a/b/c`` in the last word are alternatives; words stop at the first argument or option.
    """
    found: list[tuple[str, ...]] = []
    for span in re.findall(r"`([^`]+)`", cell):
        tokens = span.split()
        if tokens and tokens[0] == "raymlops":
            tokens = tokens[1:]
        words: list[str] = []
        for token in tokens:
            if not _WORD.fullmatch(token):
                break
            words.append(token)
        if not words:
            continue
        for alt in words[-1].split("/"):
            cmd = (*words[:-1], alt)
            if cmd not in found:
                found.append(cmd)
    return found


ROWS = _cli_rows((REPO / "README.md").read_text())
COMMANDS = [cmd for row in ROWS for cmd in _commands(row)]


def test_the_readme_table_was_read() -> None:
    # Guards the parser: an empty or misread table would make the parametrized test pass vacuously.
    assert len(ROWS) >= 9, ROWS
    assert all(_commands(row) for row in ROWS), ROWS
    for expected in [("run",), ("models", "show"), ("serve", "config"), ("submit",), ("jobs", "stop")]:
        assert expected in COMMANDS, COMMANDS
    assert _commands("`raymlops serve REF... [--host H]` · `raymlops serve config REF... -o FILE`") == [
        ("serve",),
        ("serve", "config"),
    ]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_help_of_every_documented_command_exits_0(command: tuple[str, ...]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "raymlops.cli", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"raymlops {' '.join(command)} --help: {proc.stdout}{proc.stderr}"
    assert "Usage:" in proc.stdout
