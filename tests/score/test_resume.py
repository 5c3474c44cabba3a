"""Idempotent, resumable scoring: a killed job resumes without duplicating or losing a row."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from raymlops.cluster import marked_processes
from raymlops.score import SUCCESS_FILE, ScoreError, score

from . import TrainedModel, make_rows, read_rejected, read_scored, trained_model, write_parquet_shards

N_ROWS = 2400
BAD_IDS = [5, 1300, 2399]  # null x1: quarantined
CRASH_MARK = "RAYMLOPS_TEST_CRASH_MARK"


@pytest.fixture(scope="module")
def model(ray_session, tmp_path_factory) -> TrainedModel:
    return trained_model(tmp_path_factory.getbasetemp() / "score-model")


def _crash(proc: subprocess.Popen[bytes], mark: str) -> None:
    """SIGKILL the CLI and every process of its Ray instance at once, as a lost machine would.

    Killing the CLI's process group alone leaves Ray's workers, in their own groups, a moment in
    which they finish and commit units; counting the committed units before they are gone races.
    """
    os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pids := marked_processes(CRASH_MARK, mark):
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        assert time.monotonic() < deadline, f"processes {pids} survived SIGKILL"
        time.sleep(0.1)
    proc.wait()


def _input(folder: Path) -> Path:
    rows = make_rows(N_ROWS, seed=11)
    rows.loc[BAD_IDS, "x1"] = np.nan
    write_parquet_shards(rows, folder, shards=2, row_group_rows=200)  # 12 row groups -> 6 units of 400
    return folder


def _assert_complete(out: Path) -> None:
    scored = read_scored(out)
    rejected = read_rejected(out / "_rejected")
    assert sorted(scored["id"]) == sorted(set(range(N_ROWS)) - set(BAD_IDS))  # no loss, no duplicate
    assert sorted(rejected["id"]) == BAD_IDS
    assert (out / SUCCESS_FILE).exists() and not (out / "_tmp").exists()


def test_resume_redoes_only_unfinished_units(model, tmp_path: Path) -> None:
    src, out = _input(tmp_path / "in"), tmp_path / "out"
    first = score(model.ref, str(src), str(out), store=model.store, unit_rows=400, progress=False)
    assert first["units"] == 6 and first["rows_in"] == N_ROWS
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}

    # What a kill leaves behind: two units without their scored file (one of them after its rejected
    # file was already renamed into place), a half-written temporary, no success marker.
    (out / "part-00003.parquet").unlink()
    (out / "part-00005.parquet").unlink()
    assert (out / "_rejected" / "part-00005.parquet").exists()  # row 2399 is in the last unit
    (out / "_tmp").mkdir()
    (out / "_tmp" / "part-00003.deadbeef.parquet").write_bytes(b"PAR1 half a file")
    (out / SUCCESS_FILE).unlink()

    with pytest.raises(ScoreError, match="--resume"):
        score(model.ref, str(src), str(out), store=model.store, unit_rows=400, progress=False)
    again = score(
        model.ref, str(src), str(out), store=model.store, unit_rows=400, resume=True, progress=False
    )
    assert again["resumed"] and again["units_resumed"] == 4 and again["rows_this_run"] == 800
    assert (again["rows_in"], again["rows_scored"], again["rows_rejected"]) == (N_ROWS, N_ROWS - 3, 3)
    _assert_complete(out)
    untouched = {n: t for n, t in kept.items() if n not in ("part-00003.parquet", "part-00005.parquet")}
    assert {n: (out / n).stat().st_mtime_ns for n in untouched} == untouched  # finished units not redone

    # Resuming a finished job changes nothing and reports the same counts.
    done = score(model.ref, str(src), str(out), store=model.store, unit_rows=400, resume=True, progress=False)
    assert done["units_resumed"] == 6 and done["rows_this_run"] == 0 and done["rows_in"] == N_ROWS


def test_resume_refuses_a_job_with_other_arguments(model, tmp_path: Path) -> None:
    src, out = _input(tmp_path / "in"), tmp_path / "out"
    score(model.ref, str(src), str(out), store=model.store, unit_rows=400, progress=False)
    with pytest.raises(ScoreError, match="--keep columns"):
        score(
            model.ref,
            str(src),
            str(out),
            store=model.store,
            unit_rows=400,
            keep=["id"],
            resume=True,
            progress=False,
        )
    with pytest.raises(ScoreError, match="units of work"):
        score(model.ref, str(src), str(out), store=model.store, unit_rows=800, resume=True, progress=False)


def test_killed_run_resumes_without_losing_or_duplicating_rows(model, tmp_path: Path) -> None:
    src, out = _input(tmp_path / "in"), tmp_path / "out"
    exe = Path(sys.executable).parent / "raymlops"
    cmd = [
        str(exe),
        "score",
        model.ref,
        "--store",
        model.store,
        "--input",
        str(src),
        "--output",
        str(out),
        "--unit-rows",
        "400",
        "--workers",
        "2",
    ]
    mark = uuid.uuid4().hex  # every process of the run's own Ray instance inherits it
    env = {**os.environ, "RAYMLOPS_SCORE_UNIT_DELAY_S": "2", CRASH_MARK: mark}
    env.pop("RAY_ADDRESS", None)  # its own embedded Ray, as a user's command would have
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob("part-*.parquet"))) < 2:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else proc.returncode
            assert time.monotonic() < deadline, "the run never committed a unit"
            time.sleep(0.05)
    finally:
        _crash(proc, mark)
    committed = len(list(out.glob("part-*.parquet")))
    assert 2 <= committed < 6 and not (out / SUCCESS_FILE).exists()

    summary = score(
        model.ref,
        str(src),
        str(out),
        store=model.store,
        unit_rows=400,
        workers=2,
        resume=True,
        progress=False,
    )
    assert summary["units_resumed"] == committed
    assert (summary["rows_in"], summary["rows_scored"], summary["rows_rejected"]) == (N_ROWS, N_ROWS - 3, 3)
    _assert_complete(out)
