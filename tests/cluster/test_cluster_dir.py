"""The local cluster's folder is private, and a folder someone else could control is refused.

Fast: no Ray starts. The rules are exercised twice, through ``cluster/local/cluster_dir.sh`` (the
functions up.sh and down.sh source) and through ``up.sh``/``down.sh`` themselves, with ``RAYMLOPS_RAY``
pointing at a stub ``ray`` that fails at once: everything up.sh does before ``ray start`` (folder,
token) is real, and the failed start shows that nothing is left half-made.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "cluster" / "local"
UP, DOWN, LIB = LOCAL / "up.sh", LOCAL / "down.sh", LOCAL / "cluster_dir.sh"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("bash") is None,
    reason="the scripts need Linux and bash",
)


def _remove(path: Path) -> None:
    for p in path.rglob("*"):  # folders a test made unreadable must still go
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o700)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A private folder with a name short enough to hold the default cluster folder: /tmp/rXXXX.

    The default folder, <TMPDIR>/raymlops-cluster-<uid>, must leave room for Ray's socket paths
    below it (107 bytes in all), so the TMPDIR the tests give up.sh must be about as short as /tmp.
    """
    while True:
        path = Path(f"/tmp/r{secrets.token_hex(2)}")
        try:
            path.mkdir(mode=0o700)
            break
        except FileExistsError:
            continue
    try:
        yield path
    finally:
        _remove(path)


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rcd-", dir="/tmp"))
    try:
        yield path
    finally:
        _remove(path)


def _lib(call: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'source "{LIB}"; {call}'], capture_output=True, text=True, timeout=30, cwd=cwd
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def stub_ray(work: Path) -> Path:
    """A `ray` that fails at once, with the real Python next to it (up.sh runs that Python)."""
    bin_dir = work / "bin"
    bin_dir.mkdir()
    (bin_dir / "ray").write_text("#!/bin/sh\necho 'stub ray: not starting anything' >&2\nexit 3\n")
    (bin_dir / "ray").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    return bin_dir / "ray"


def _script_env(stub_ray: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYMLOPS_"))}
    # Ports far from Ray's defaults and from other tests' clusters; up.sh may still find one taken,
    # which stops it after the folder and the token, as the stub does.
    env.update(
        RAYMLOPS_RAY=str(stub_ray),
        RAYMLOPS_GCS_PORT="47390",
        RAYMLOPS_DASHBOARD_PORT="47375",
        RAYMLOPS_PORT_BASE="47400",
        RAYMLOPS_WORKER_PORT_BASE="48000",
        RAYMLOPS_STOP_GRACE_S="2",
        **extra,
    )
    return env


def _up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(UP)], env=env, capture_output=True, text=True, timeout=120)


# --- the rules -------------------------------------------------------------------------------------


def test_default_folder_is_per_user_under_tmpdir(short_tmp: Path) -> None:
    out = subprocess.run(
        ["bash", "-c", f'source "{LIB}"; raymlops_default_cluster_dir'],
        env={**os.environ, "TMPDIR": str(short_tmp)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == f"{short_tmp}/raymlops-cluster-{os.getuid()}"


def test_a_new_folder_is_created_private(short_tmp: Path) -> None:
    target = short_tmp / "c1"
    out = _lib(f'raymlops_prepare_cluster_dir "{target}" /x')
    assert out.returncode == 0, out.stdout + out.stderr
    assert target.is_dir() and _mode(target) == 0o700


def test_an_existing_private_folder_of_ours_is_used(short_tmp: Path) -> None:
    target = short_tmp / "mine"
    target.mkdir(mode=0o700)
    (target / "store").mkdir()
    assert _lib(f'raymlops_prepare_cluster_dir "{target}" /x').returncode == 0
    assert (target / "store").is_dir()


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o777])
def test_a_folder_group_or_others_can_enter_is_refused(short_tmp: Path, mode: int) -> None:
    target = short_tmp / "open"
    target.mkdir()
    target.chmod(mode)
    out = _lib(f'raymlops_prepare_cluster_dir "{target}" /x')
    assert out.returncode == 1
    assert f"has mode {mode:o}" in out.stdout and "chmod 700" in out.stdout, out.stdout
    assert _mode(target) == mode, "the check must not change the folder"


def test_a_symlink_is_refused_even_to_a_private_folder_of_ours(short_tmp: Path) -> None:
    real = short_tmp / "real"
    real.mkdir(mode=0o700)
    link = short_tmp / "link"
    link.symlink_to(real)
    out = _lib(f'raymlops_prepare_cluster_dir "{link}" /x')
    assert out.returncode == 1 and "symbolic link" in out.stdout, out.stdout


def test_a_folder_of_another_user_is_refused(short_tmp: Path) -> None:
    if os.geteuid() == 0:
        target = short_tmp / "theirs"
        target.mkdir(mode=0o700)
        os.chown(target, 65534, 65534)  # nobody
        owner = 65534
    else:
        target, owner = Path("/"), 0  # root's; a non-root user cannot make a folder for someone else
    out = _lib(f'raymlops_check_cluster_dir "{target}"')
    assert out.returncode == 1
    assert f"belongs to uid {owner}, not to you (uid {os.geteuid()})" in out.stdout, out.stdout


def test_a_file_in_the_way_is_refused(short_tmp: Path) -> None:
    (short_tmp / "file").write_text("x")
    out = _lib(f'raymlops_prepare_cluster_dir "{short_tmp / "file"}" /x')
    assert out.returncode == 1 and "not a directory" in out.stdout


def test_a_path_too_long_for_rays_sockets_is_refused_before_anything_is_made(short_tmp: Path) -> None:
    target = short_tmp / ("d" * 40)
    suffix = "/ray/worker2/session_0000-00-00_00-00-00_000000_4194304/sockets/plasma_store"
    out = _lib(f'raymlops_prepare_cluster_dir "{target}" "{suffix}"')
    assert out.returncode == 1 and "too long for Ray's socket paths" in out.stdout, out.stdout
    assert not target.exists()
    # Relative paths count from the working directory.
    out = _lib(f'raymlops_prepare_cluster_dir "{"d" * 40}" "{suffix}"', cwd=short_tmp)
    assert out.returncode == 1 and f"{short_tmp}/{'d' * 40}" in out.stdout


# --- the scripts -----------------------------------------------------------------------------------


def test_up_creates_the_default_folder_private_with_a_private_token(short_tmp: Path, stub_ray: Path) -> None:
    tmpdir = short_tmp
    out = _up(_script_env(stub_ray, TMPDIR=str(tmpdir)))
    assert out.returncode != 0, "the stub ray cannot start a cluster"
    cluster_dir = tmpdir / f"raymlops-cluster-{os.getuid()}"
    assert cluster_dir.is_dir() and _mode(cluster_dir) == 0o700
    token = cluster_dir / "auth_token"
    assert _mode(token) == 0o600 and len(token.read_text()) == 64
    assert not (cluster_dir / "env.sh").exists(), "a failed start must not leave a state file behind"
    # It got past the folder checks and stopped at the stub (or at a port someone else holds).
    assert "stub ray: not starting anything" in out.stderr or "port(s) in use" in out.stderr, out.stderr
    assert "belongs to" not in out.stderr and "has mode" not in out.stderr


def test_up_refuses_a_default_folder_planted_by_someone_else(
    short_tmp: Path, work: Path, stub_ray: Path
) -> None:
    tmpdir = short_tmp
    victim = work / "precious"
    victim.mkdir(mode=0o700)
    (victim / "keep.txt").write_text("mine")
    (tmpdir / f"raymlops-cluster-{os.getuid()}").symlink_to(victim)
    out = _up(_script_env(stub_ray, TMPDIR=str(tmpdir)))
    assert out.returncode == 1
    assert "symbolic link" in out.stderr and "RAYMLOPS_CLUSTER_DIR" in out.stderr, out.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"], "up.sh wrote into the symlink's target"
    # down.sh --purge by the same default must not delete what the link points at.
    down = subprocess.run(
        ["bash", str(DOWN), "--purge"],
        env=_script_env(stub_ray, TMPDIR=str(tmpdir)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 1 and "symbolic link" in down.stderr, down.stderr
    assert (victim / "keep.txt").read_text() == "mine"


def test_up_refuses_an_open_folder_given_by_the_user(work: Path, stub_ray: Path) -> None:
    shared = work / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    out = _up(_script_env(stub_ray, RAYMLOPS_CLUSTER_DIR=str(shared)))
    assert out.returncode == 1 and "has mode 777" in out.stderr, out.stderr
    assert list(shared.iterdir()) == [], "nothing (no token) may be written into a refused folder"


def test_up_uses_a_private_folder_given_by_the_user(work: Path, stub_ray: Path) -> None:
    """What tests/cluster/test_local_cluster.py does: RAYMLOPS_CLUSTER_DIR from tempfile.mkdtemp (0700)."""
    given = Path(tempfile.mkdtemp(prefix="rmc-", dir=work))
    out = _up(_script_env(stub_ray, RAYMLOPS_CLUSTER_DIR=str(given)))
    assert "has mode" not in out.stderr and "belongs to" not in out.stderr, out.stderr
    assert _mode(given / "auth_token") == 0o600
    down = subprocess.run(
        ["bash", str(DOWN), "--purge"],
        env=_script_env(stub_ray, RAYMLOPS_CLUSTER_DIR=str(given)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert down.returncode == 0, down.stderr
    assert not given.exists()
