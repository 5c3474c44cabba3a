"""Terminal output rules: results on stdout, everything else (logs, progress, tables) on stderr.

A command that runs on Ray does its work inside :func:`command_session`, which keeps the terminal
readable and leaves nothing behind:

- Ray's, Tune's and TensorFlow's own output (the driver's and every worker's) goes to a log file,
  ``<store>/logs/<command>-<time>.log``, whose path is printed; ``verbose`` streams it as before
  (and still copies the workers' lines into the file).
- A live view of the command's stages and trials (:mod:`raymlops._progress`) is drawn on stderr.
- When the command ends, however it ends (success, error, Ctrl-C, SIGTERM), the Ray instance it
  started is shut down and any process of it still running is ended (:func:`raymlops.cluster.shutdown`).
  Ctrl-C exits 130, SIGTERM 143.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from rich.console import Console

__all__ = [
    "CommandSession",
    "Terminated",
    "raise_terminated",
    "command_session",
    "err_console",
    "json_stdout",
    "log_dir",
    "print_json",
]

err_console = Console(stderr=True)

LOG_DIR_ENV = "RAYMLOPS_LOG_DIR"
_QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ notices (oneDNN, CUDA) in the driver and workers
    "RAY_DEDUP_LOGS": "1",
    # Ctrl-C must stop the command, not just end the current search and let the pipeline go on
    # with its partial result (Tune's own handler); Tune saves the experiment state as it goes,
    # so `--resume` still continues an interrupted search.
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd, Kubernetes, ``kill``): stop like Ctrl-C, exit 143."""


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


def log_dir(store: str | None) -> Path:
    """Where a command's log file goes: ``$RAYMLOPS_LOG_DIR``, else ``<store>/logs`` for a local
    store, else ``~/.raymlops/logs`` (an object store is no place to tail a log)."""
    env = os.environ.get(LOG_DIR_ENV)
    if env:
        return Path(env).expanduser().absolute()
    if store and ("://" not in store or store.startswith("file://")):
        return Path(store.removeprefix("file://")).expanduser().absolute() / "logs"
    return Path.home() / ".raymlops" / "logs"


@dataclass
class CommandSession:
    """What a command's body can use while its session is open."""

    command: str
    log_path: Path
    verbose: bool
    view: Any = None  # a raymlops._progress.ProgressView, when one is drawn
    interrupt_hint: str = ""  # printed after Ctrl-C, e.g. how to resume
    _cleanups: list[Callable[[], None]] = field(default_factory=list)


def _stderr_is_fd2() -> bool:
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a test runner's in-memory stream
        return False


@contextlib.contextmanager
def _redirect_fds(log: IO[str]) -> Iterator[None]:
    """Point file descriptors 1 and 2 at the log, so C++ and child-process output lands there too;
    ``err_console`` keeps drawing on the real stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    terminal: IO[str] | None = None
    if _stderr_is_fd2():
        encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
        terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding=encoding, errors="replace")
        err_console.file = terminal
    saved = (os.dup(1), os.dup(2))
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        if terminal is not None:
            err_console.file = None  # type: ignore[assignment]  # back to sys.stderr
            terminal.close()


def _route_worker_logs(log: IO[str], verbose: bool) -> Callable[[], None]:
    """Send the worker log lines Ray streams to this driver into the log file (and, with
    ``verbose``, also to the terminal as Ray does). Returns the undo."""
    import ray
    from ray._private import worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    name, ray_name = "raymlops_log_file", "ray_print_logs"
    dispatcher.remove_handler(name)
    taken = [] if verbose else [pair for pair in dispatcher.handlers if pair[0] == ray_name]
    if taken:
        dispatcher.remove_handler(ray_name)
    plain = _Uncolored(log)

    def to_file(data: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            ray_worker.print_worker_logs(data, plain)

    dispatcher.add_handler(name, to_file)

    def undo() -> None:
        dispatcher.remove_handler(name)
        if ray.is_initialized():  # a Ray this command did not start keeps printing as before
            for pair in taken:
                dispatcher.add_handler(*pair)

    return undo


class _Uncolored:
    """A text stream that drops the ANSI colours Ray puts on worker-log prefixes (a log file is
    read with ``less`` and ``grep``)."""

    _ansi = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(self._ansi.sub("", text))

    def flush(self) -> None:
        self.stream.flush()


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def _log_path(command: str, store: str | None) -> Path:
    folder = log_dir(store)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only store still gets a log, in the home folder
        folder = Path.home() / ".raymlops" / "logs"
        folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"{command}-{stamp}.log"
    n = 1
    while path.exists():  # two commands in the same second each get their own file
        n += 1
        path = folder / f"{command}-{stamp}-{n}.log"
    return path


def _file_handler(log: IO[str]) -> logging.Handler:
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
    handler.setLevel(logging.INFO)
    return handler


@contextlib.contextmanager
def command_session(
    command: str,
    *,
    store: str | None = None,
    verbose: bool = False,
    title: str | None = None,
    view: bool = True,
) -> Iterator[CommandSession]:
    """Run a command's body with a quiet terminal, a live view and nothing left behind.

    Args:
        command: the command's name, for the log file's name and the view's title.
        store: the store URI; a local store keeps the logs in ``<store>/logs``.
        verbose: stream Ray's, Tune's and TensorFlow's logs to the terminal instead.
        title: the view's first line (default ``raymlops COMMAND``).
        view: draw the stage/trial view (``score`` has its own progress bar instead).

    Raises:
        typer.Exit: 130 after Ctrl-C, 143 after SIGTERM, once everything is cleaned up.
    """
    import typer

    from raymlops import _progress, cluster

    path = _log_path(command, store)
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    session = CommandSession(command, path, verbose)
    ray_was_up = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    saved_env = {k: os.environ.get(k) for k in _QUIET_ENV}
    for key, value in _QUIET_ENV.items():  # -v streams what it did before this session too
        os.environ.setdefault(key, value)
    main_thread = _is_main_thread()
    saved_term = signal.getsignal(signal.SIGTERM) if main_thread else None
    # Ray's loggers write to stderr, the log file unless verbose; raymlops's own go there too.
    logged = ("raymlops", "ray") if verbose else ("raymlops",)
    handler = _file_handler(log)
    for name in logged:
        logging.getLogger(name).addHandler(handler)
    if logging.getLogger("raymlops").level in (logging.NOTSET, logging.WARNING):
        logging.getLogger("raymlops").setLevel(logging.INFO)

    def on_connect() -> None:
        if main_thread:
            signal.signal(signal.SIGTERM, raise_terminated)  # ray.init installs its own
        session._cleanups.append(_route_worker_logs(log, verbose))

    outcome, code = "done", 0
    where = f"logs: {path}" + ("" if verbose else "   (-v shows them here)")
    with contextlib.ExitStack() as stack:
        if main_thread:
            signal.signal(signal.SIGTERM, raise_terminated)
        cluster.connect_hooks.append(on_connect)
        if ray_was_up:
            session._cleanups.append(_route_worker_logs(log, verbose))
        if not verbose:
            stack.enter_context(_redirect_fds(log))
        if view:
            # With -v the logs stream at the descriptor level: redrawing in place would garble them.
            live = False if verbose else None
            session.view = _progress.ProgressView(
                err_console, title or f"raymlops {command}", where, live=live
            )
            _progress.set_active_view(session.view)
            session.view.start()
        else:
            err_console.print(where, style="dim", highlight=False, soft_wrap=True)
        try:
            yield session
        except KeyboardInterrupt as err:
            outcome, code = "interrupted", 143 if isinstance(err, Terminated) else 130
        except typer.Exit as err:
            outcome = "done" if err.exit_code == 0 else "failed"
            raise
        except BaseException:
            outcome = "failed"
            raise
        finally:
            _cleanup(session, outcome, ray_was_up, on_connect, saved_term, main_thread)
    for name in logged:
        logging.getLogger(name).removeHandler(handler)
    log.close()
    for key, old in saved_env.items():
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
    if outcome == "failed":
        err_console.print(f"logs: {path}", style="dim", highlight=False, soft_wrap=True)
    if code:
        what = "stopped (SIGTERM)" if code == 143 else "interrupted (Ctrl-C)"
        err_console.print(f"[yellow]{what}[/]; no Ray process left running", highlight=False)
        if session.interrupt_hint:
            err_console.print(session.interrupt_hint, highlight=False, soft_wrap=True)
        err_console.print(f"logs: {path}", style="dim", highlight=False, soft_wrap=True)
        raise typer.Exit(code)


def _cleanup(
    session: CommandSession,
    outcome: str,
    ray_was_up: bool,
    on_connect: Callable[[], None],
    saved_term: Any,
    main_thread: bool,
) -> None:
    """Stop the view and the Ray instance this command started; a second Ctrl-C waits for it
    (the sweep takes a few seconds, and stopping halfway would leave processes behind)."""
    from raymlops import _progress, cluster

    saved_int = signal.getsignal(signal.SIGINT) if main_thread else None
    if main_thread:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        if session.view is not None:
            session.view.stop(outcome)
            _progress.set_active_view(None)
        with contextlib.suppress(ValueError):
            cluster.connect_hooks.remove(on_connect)
        for undo in session._cleanups:
            with contextlib.suppress(Exception):
                undo()
        if not ray_was_up:
            cluster.shutdown()
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, saved_int if saved_int is not None else signal.default_int_handler)
            signal.signal(signal.SIGTERM, saved_term if saved_term is not None else signal.SIG_DFL)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
