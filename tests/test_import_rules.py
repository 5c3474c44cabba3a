"""Inference code never imports training code, and the lint says so when it does.

``raymlops/model``, ``serve``, ``score`` and ``monitor`` are what a serving replica or a scoring
worker loads; importing ``raymlops.train`` there would pull Ray Train/Tune into every replica and
tie a served model to the code that trained it. ``make lint`` enforces the rule with ruff's
banned-api (TID251, scoped in pyproject.toml); these tests show that the rule fires where it
must, stays quiet elsewhere, that the real package obeys it, and that the rule holds at run time
too (no transitive import either).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INFERENCE = ("model", "serve", "score", "monitor")
VIOLATIONS = (
    "from raymlops.train import tune\n",
    "import raymlops.train.keras\n",
    "from ..train.keras import model_spec\n",
    "from raymlops import train\n",
    "def lazy():\n    from raymlops.train.xgboost import report_every\n\n    return report_every\n",
)


def _ruff(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "json", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _codes(proc: subprocess.CompletedProcess[str]) -> list[tuple[str, str]]:
    return [(Path(d["filename"]).name, d["code"]) for d in json.loads(proc.stdout or "[]")]


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """An empty project with the real pyproject.toml: the rule as `make lint` applies it."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for sub in ("", *INFERENCE, "train", "evaluate"):
        folder = tmp_path / "raymlops" / sub
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text("")
    return tmp_path


@pytest.mark.parametrize("area", INFERENCE)
@pytest.mark.parametrize("source", VIOLATIONS, ids=["from", "import", "relative", "package", "lazy"])
def test_lint_fails_when_inference_code_imports_train(project_copy: Path, area: str, source: str) -> None:
    (project_copy / "raymlops" / area / "_violation.py").write_text(source)
    proc = _ruff(["raymlops"], project_copy)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert ("_violation.py", "TID251") in _codes(proc)
    assert "must not import raymlops.train" in proc.stdout


def test_training_side_code_may_import_train(project_copy: Path) -> None:
    # The pipeline driver, evaluation helpers and train/ itself are where training code belongs.
    for place in ("pipeline.py", "evaluate/_uses_train.py", "train/_inner.py"):
        (project_copy / "raymlops" / place).write_text("from raymlops.train import tune\n\nprint(tune)\n")
    proc = _ruff(["raymlops"], project_copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_real_package_obeys_the_rule() -> None:
    proc = _ruff(["--select", "TID251", "raymlops"], REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_loading_inference_code_imports_no_training_code() -> None:
    # The lint sees direct imports only; at run time a transitive one (monitor -> pipeline -> train)
    # would be as bad. Import every inference module in a fresh interpreter and look.
    code = (
        "import importlib, pkgutil, sys\n"
        f"for area in {INFERENCE!r}:\n"
        "    pkg = importlib.import_module('raymlops.' + area)\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "print(sorted(m for m in sys.modules if m == 'raymlops.train' or m.startswith('raymlops.train.')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
