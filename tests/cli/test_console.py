"""The console session without Ray: where output goes, what Ctrl-C and SIGTERM do, the view."""

from __future__ import annotations

import io
import os
import signal
import time

import pytest
import typer
from rich.console import Console

from raymlops import _console, _progress
from raymlops._console import command_session, log_dir


def test_noise_goes_to_the_log_file_and_the_view_stays_on_the_terminal(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("RAYMLOPS_LOG_DIR", str(tmp_path))
    with command_session("run", title="raymlops run demo") as session:
        _progress.stage("ingest")
        os.write(2, b"I1202 oneDNN custom operations are on\n")  # C-level, like TensorFlow's
        os.write(1, b"Trial status: 2 RUNNING\n")  # Tune's table on stdout
        _progress.stage("split")
    out, err = capfd.readouterr()
    log = session.log_path.read_text()
    assert "oneDNN" in log and "Trial status" in log
    assert "oneDNN" not in err and "Trial status" not in out
    assert "raymlops run demo" in err and f"logs: {session.log_path}" in err
    assert "✓ ingest" in err and "✓ split" in err
    assert session.log_path.parent == tmp_path and session.log_path.name.startswith("run-")
    os.write(2, b"after\n")  # the descriptors are back
    assert "after" in capfd.readouterr().err


def test_verbose_leaves_the_stream_on_the_terminal(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("RAYMLOPS_LOG_DIR", str(tmp_path))
    with command_session("score", verbose=True, view=False):
        os.write(2, b"worker says hello\n")
    assert "worker says hello" in capfd.readouterr().err


def test_ctrl_c_exits_130_and_says_how_to_resume(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("RAYMLOPS_LOG_DIR", str(tmp_path))
    with pytest.raises(typer.Exit) as exit_info, command_session("run") as session:
        session.interrupt_hint = "raymlops run p.yaml --resume continues"
        _progress.stage("search rf")
        raise KeyboardInterrupt
    assert exit_info.value.exit_code == 130
    err = capfd.readouterr().err
    assert "■ search rf" in err and "interrupted (Ctrl-C)" in err and "--resume continues" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_sigterm_stops_like_ctrl_c_with_143(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYMLOPS_LOG_DIR", str(tmp_path))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.Exit) as exit_info, command_session("serve", view=False):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted at once
    assert exit_info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_failure_marks_the_stage_and_propagates(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("RAYMLOPS_LOG_DIR", str(tmp_path))
    with pytest.raises(ValueError), command_session("run"):
        _progress.stage("checks")
        raise ValueError("boom")
    err = capfd.readouterr().err
    assert "✗ checks" in err and "failed" in err and "logs:" in err


def test_log_dir_is_in_a_local_store_else_home(monkeypatch, tmp_path):
    monkeypatch.delenv("RAYMLOPS_LOG_DIR", raising=False)
    assert log_dir(str(tmp_path / "store")) == tmp_path / "store" / "logs"
    assert log_dir("s3://bucket/store") == _console.Path.home() / ".raymlops" / "logs"


def test_live_view_lists_trials_with_state_step_and_best():
    out = io.StringIO()
    view = _progress.ProgressView(Console(file=out, width=100), "raymlops run demo", live=False)
    search = _progress.SearchProgress("mlp", "keras", "accuracy", "max", total=2)
    search.trials["a"] = _progress.TrialRow(1, "RUNNING", "epoch 3", 0.91, 0.93)
    search.trials["b"] = _progress.TrialRow(2, "TERMINATED", "epoch 15", 0.95, 0.95)
    search.best = 0.95
    view.stage("search mlp")
    view.search(search)
    rendered = io.StringIO()
    Console(file=rendered, width=100).print(view._render())
    text = rendered.getvalue()
    assert "search mlp" in text and "1/2 trials done, best accuracy 0.9500" in text
    assert "running" in text and "epoch 3" in text and "0.9300" in text
    assert "terminated" in text and "epoch 15" in text


def test_step_label_names_the_unit_of_each_kind():
    assert _progress.step_label("keras", {"epoch": 4, "training_iteration": 4}) == "epoch 4"
    assert _progress.step_label("random_forest", {"trees": 60, "training_iteration": 3}) == "60 trees"
    assert _progress.step_label("xgboost", {"rounds": 20, "training_iteration": 2}) == "round 20"
    assert _progress.step_label("sklearn", {"training_iteration": 2}) == "step 2"


def test_stage_calls_do_nothing_without_a_view():
    assert _progress.active_view() is None
    _progress.stage("ingest")  # the library outside a command: no output, no error
    assert _progress.search_callbacks("rf", "random_forest", "accuracy", "max", 2) == []
