"""What ``raymlops submit`` puts into a job's working directory, and when it warns.

The working directory is uploaded to the cluster as it is: whatever lands there leaves this
machine. These tests stage real folders (dotfiles, symbolic links to secrets, stray files, builder
modules) and look at exactly what would be sent. No cluster needed; the cluster tests submit for real.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from raymlops.errors import ConfigError
from raymlops.submit import SubmitError, _Jobs, stage_working_dir, token_transport_warning

REPO = Path(__file__).resolve().parents[1]
SECRET = "AWS_SECRET_ACCESS_KEY=do-not-upload"


def _pipeline(folder: Path, source: str, **extra: Any) -> Path:
    doc: dict[str, Any] = {
        "name": "shipped",
        "data": {"source": source, "target": "target"},
        "models": [{"name": "rf", "kind": "random_forest", "params": {"n_estimators": 5}}],
        **extra,
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _shipped(dest: Path) -> set[str]:
    return {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() or p.is_symlink()}


def _assert_no_secret(dest: Path) -> None:
    for p in dest.rglob("*"):
        assert not p.is_symlink(), f"{p} is a link"
        if p.is_file():
            assert SECRET not in p.read_text(errors="replace"), f"{p} carries the secret"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A secret elsewhere on this machine, for links to point at."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "credentials.csv").write_text(SECRET + "\n")
    return folder


def test_a_data_folder_ships_only_its_csv_and_parquet_files(tmp_path: Path, outside: Path) -> None:
    project = tmp_path / "project"
    data = project / "rows"
    (data / "2026" / "01").mkdir(parents=True)
    (data / "a.csv").write_text("x,target\n1,0\n")
    (data / "2026" / "01" / "b.parquet").write_bytes(b"PAR1 not really")
    (data / "2026" / "01" / "c.pq").write_bytes(b"PAR1")
    (data / ".env").write_text(SECRET)
    (data / ".git").mkdir()
    (data / ".git" / "config.csv").write_text(SECRET)
    (data / "_rejected").mkdir()
    (data / "_rejected" / "part-0.csv").write_text("x\n")
    (data / "notes.txt").write_text("not data")
    (data / "key.csv").symlink_to(outside / "credentials.csv")
    (data / "linked_dir").symlink_to(outside, target_is_directory=True)
    dest = tmp_path / "dest"
    dest.mkdir()

    name, cfg, warnings = stage_working_dir(_pipeline(project, "rows"), dest)

    assert _shipped(dest) == {
        "pipeline.yaml",
        "data/rows/a.csv",
        "data/rows/2026/01/b.parquet",
        "data/rows/2026/01/c.pq",
    }
    _assert_no_secret(dest)
    assert yaml.safe_load((dest / name).read_text())["data"]["source"] == "data/rows"
    assert cfg.name == "shipped"
    (left,) = [w for w in warnings if "not uploaded" in w]
    for item in (".env (hidden)", ".git/ (hidden)", "_rejected/ (hidden)", "key.csv (symbolic link)"):
        assert item in left, left
    assert "linked_dir/ (symbolic link)" in left and "notes.txt (not .csv/.parquet/.pq)" in left


def test_a_linked_or_non_data_source_is_refused(tmp_path: Path, outside: Path) -> None:
    (tmp_path / "rows.csv").symlink_to(outside / "credentials.csv")
    with pytest.raises(SubmitError, match=r"data source 'rows.csv' is a symbolic link .*credentials\.csv"):
        stage_working_dir(_pipeline(tmp_path, "rows.csv"), tmp_path / "d1")
    (tmp_path / ".env").write_text(SECRET)
    with pytest.raises(SubmitError, match=r"'.env' is not a .csv/.parquet/.pq file"):
        stage_working_dir(_pipeline(tmp_path, ".env"), tmp_path / "d2")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".env").write_text(SECRET)
    with pytest.raises(SubmitError, match=r"holds no .csv/.parquet/.pq files to upload \(left out: .env"):
        stage_working_dir(_pipeline(tmp_path, "empty"), tmp_path / "d3")
    with pytest.raises(SubmitError, match="not found"):
        stage_working_dir(_pipeline(tmp_path, "missing.csv"), tmp_path / "d4")


def test_a_single_data_file_travels_under_data(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("x,target\n1,0\n")
    (tmp_path / ".env").write_text(SECRET)  # beside the pipeline, not named by it
    dest = tmp_path / "dest"
    dest.mkdir()
    name, _, _ = stage_working_dir(_pipeline(tmp_path, str(tmp_path / "rows.csv")), dest)
    assert _shipped(dest) == {"pipeline.yaml", "data/rows.csv"}
    assert yaml.safe_load((dest / name).read_text())["data"]["source"] == "data/rows.csv"


def test_the_keras_builder_module_travels_with_the_pipeline(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    name, cfg, warnings = stage_working_dir(REPO / "pipelines" / "custom_keras.yaml", dest)
    assert _shipped(dest) == {"custom_keras.yaml", "digits_nets.py"}
    assert (dest / "digits_nets.py").read_text() == (REPO / "pipelines" / "digits_nets.py").read_text()
    assert cfg.models[0].builder == "digits_nets:build" and not warnings


def test_a_builder_package_ships_its_python_files_only(tmp_path: Path, outside: Path) -> None:
    pkg = tmp_path / "nets"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "deep.py").write_text("def build(*a):\n    return None\n")
    (pkg / "__pycache__" / "deep.cpython-311.pyc").write_bytes(b"\0")
    (pkg / ".env").write_text(SECRET)
    (pkg / "weights.csv").symlink_to(outside / "credentials.csv")
    models = [
        {"name": "a", "kind": "keras", "builder": "nets.deep:build", "params": {"epochs": 1}},
        {"name": "b", "kind": "keras", "builder": "not_here:build", "params": {"epochs": 1}},
    ]
    dest = tmp_path / "dest"
    dest.mkdir()
    _, _, warnings = stage_working_dir(_pipeline(tmp_path, "builtin://digits", models=models), dest)
    assert _shipped(dest) == {"pipeline.yaml", "nets/__init__.py", "nets/deep.py"}
    _assert_no_secret(dest)
    (missing,) = [w for w in warnings if "not_here" in w]
    assert "models[1].builder" in missing and "no not_here.py or not_here/" in missing

    (tmp_path / "linked.py").symlink_to(outside / "credentials.csv")
    models[1]["builder"] = "linked:build"
    with pytest.raises(SubmitError, match="builder module .*linked.py is a symbolic link"):
        stage_working_dir(_pipeline(tmp_path, "builtin://digits", models=models), tmp_path / "d2")


def test_a_pipeline_file_is_read_as_strictly_as_run_reads_it(tmp_path: Path) -> None:
    # A repeated key would be resolved silently by plain YAML; the job would then run another file.
    path = tmp_path / "dup.yaml"
    path.write_text(
        "name: dup\ndata: {source: builtin://digits}\ngate: {min: {accuracy: 0.9}}\ngate: {}\n"
        "models: [{name: rf, kind: random_forest}]\n"
    )
    with pytest.raises(ConfigError, match="'gate' appears twice"):
        stage_working_dir(path, tmp_path)
    with pytest.raises(ConfigError, match=r"models\[0\].*n_estimatorz"):
        stage_working_dir(
            _pipeline(
                tmp_path,
                "builtin://digits",
                models=[{"name": "rf", "kind": "random_forest", "params": {"n_estimatorz": 3}}],
            ),
            tmp_path,
        )


@pytest.mark.parametrize(
    ("url", "token", "warned"),
    [
        ("http://10.0.0.5:8265", True, True),
        ("http://ray-head.example.com:8265", True, True),
        ("10.0.0.5:6379", True, True),  # no scheme: Ray reaches the dashboard over HTTP
        ("http://10.0.0.5:8265", False, False),  # nothing secret is sent
        ("https://ray-head.example.com", True, False),
        ("http://127.0.0.1:8265", True, False),
        ("http://127.8.0.1:8265", True, False),
        ("http://localhost:8265", True, False),
        ("http://[::1]:8265", True, False),
    ],
)
def test_a_token_over_plain_http_to_another_host_is_warned_about(url: str, token: bool, warned: bool) -> None:
    message = token_transport_warning(url, token)
    assert (message is not None) == warned
    if message:
        assert url in message and "plain HTTP" in message and "https://" in message


def test_the_warning_comes_before_the_token_is_sent(capsys: pytest.CaptureFixture[str]) -> None:
    # 0.0.0.0 is not loopback by address, and connecting to it on Linux is refused at once: the
    # warning must be out before the first request (which already carries the token) fails.
    with pytest.raises(SubmitError, match="cannot reach"):
        _Jobs("http://0.0.0.0:9", token="secret-token")
    assert "[raymlops] warning: the Ray auth token goes to http://0.0.0.0:9 over plain HTTP" in (
        capsys.readouterr().err
    )
    seen: list[str] = []
    with pytest.raises(SubmitError, match="cannot reach"):
        _Jobs("http://127.0.0.1:9", token="secret-token", warn=seen.append)
    assert seen == []


def test_files_are_copied_not_linked(tmp_path: Path) -> None:
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "a.csv").write_text("x,target\n1,0\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    stage_working_dir(_pipeline(tmp_path, "rows"), dest)
    shipped = dest / "data" / "rows" / "a.csv"
    assert not shipped.is_symlink() and os.stat(shipped).st_ino != os.stat(tmp_path / "rows" / "a.csv").st_ino
