"""Live progress of a command on stderr: its stages with elapsed time, and each search's trials.

The library marks where it is with one-line calls that do nothing unless a command's console
session is showing a view::

    stage("split")                  # ends the stage before it, starts this one
    callbacks += search_callbacks(model_name, kind, metric, mode, num_samples)   # Ray Tune

On a terminal the view is one ``rich.live.Live`` display redrawn in place; elsewhere (a CI log, a
pipe) each finished stage and trial is one plain line, so a log stays readable.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

__all__ = ["ProgressView", "SearchProgress", "active_view", "search_callbacks", "stage"]

_SHOWN_TRIALS = 8  # per search on a terminal: the running ones first, then the most recent

_STATE_STYLE = {
    "PENDING": "dim",
    "RUNNING": "cyan",
    "PAUSED": "yellow",
    "TERMINATED": "green",
    "ERROR": "red",
}


@dataclass
class TrialRow:
    """One Tune trial as the view shows it."""

    number: int
    state: str = "PENDING"
    step: str = ""
    metric: float | None = None
    best: float | None = None


@dataclass
class SearchProgress:
    """The trials of one model's search, fed by :class:`ProgressCallback`."""

    model: str
    kind: str
    metric: str
    mode: str
    total: int
    trials: dict[str, TrialRow] = field(default_factory=dict)
    best: float | None = None

    def better(self, value: float, than: float | None) -> bool:
        return than is None or (value > than if self.mode == "max" else value < than)

    def done(self) -> int:
        return sum(1 for t in self.trials.values() if t.state in ("TERMINATED", "ERROR"))

    def headline(self) -> str:
        best = "-" if self.best is None else f"{self.best:.4f}"
        return f"{self.done()}/{self.total} trials done, best {self.metric} {best}"


@dataclass
class Stage:
    name: str
    started: float
    ended: float | None = None
    outcome: str = "running"  # running, done, failed, interrupted
    search: SearchProgress | None = None

    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started


class ProgressView:
    """The stages of one command and the trials of its searches, drawn on ``console``.

    Args:
        console: where to draw (stderr's console; the log redirection leaves it on the terminal).
        title: the first line, e.g. ``raymlops run digits``.
        subtitle: a second line (where the log file is).
        live: redraw in place (a terminal) instead of printing one line per finished step.
    """

    def __init__(self, console: Console, title: str, subtitle: str = "", *, live: bool | None = None) -> None:
        self.console = console
        self.title = title
        self.subtitle = subtitle
        self.stages: list[Stage] = []
        self._lock = threading.RLock()
        self._live: Live | None = None
        self._use_live = console.is_terminal if live is None else live

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._use_live:
            self._live = Live(
                console=self.console,
                get_renderable=self._render,
                refresh_per_second=4,
                transient=False,
                redirect_stdout=False,  # everything not ours goes to the log file, not above the view
                redirect_stderr=False,
            )
            self._live.start()
        else:
            self.console.print(self.title, highlight=False)
            if self.subtitle:
                self.console.print(self.subtitle, highlight=False, soft_wrap=True)

    def stop(self, outcome: str = "done") -> None:
        """End the current stage with ``outcome`` and draw the final state once."""
        self._finish_current(outcome)
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    # -- what the library reports -------------------------------------------------------------
    def stage(self, name: str) -> None:
        with self._lock:
            self._finish_current("done")
            self.stages.append(Stage(name, time.monotonic()))

    def search(self, progress: SearchProgress) -> None:
        """Attach a search to the current stage (a stage named after it starts when there is none)."""
        with self._lock:
            current = self._current()
            if current is None or current.search is not None:
                self.stage(f"search {progress.model}")
                current = self._current()
            assert current is not None
            current.search = progress

    def trial_line(self, progress: SearchProgress, row: TrialRow) -> None:
        """Without a terminal: one line when a trial first reports and one when it ends."""
        if self._use_live:
            return
        value = "-" if row.best is None else f"{row.best:.4f}"
        self.console.print(
            f"    trial {row.number}/{progress.total} {row.state.lower()}: {row.step}, "
            f"best {progress.metric} {value}",
            highlight=False,
        )

    # -- internals ----------------------------------------------------------------------------
    def _current(self) -> Stage | None:
        if self.stages and self.stages[-1].ended is None:
            return self.stages[-1]
        return None

    def _finish_current(self, outcome: str) -> None:
        with self._lock:
            current = self._current()
            if current is None:
                return
            current.ended = time.monotonic()
            current.outcome = outcome
            if not self._use_live:
                self.console.print(self._stage_line(current), highlight=False)

    def _stage_line(self, st: Stage, *, mark: bool = True) -> Text:
        symbol = {"done": "✓", "failed": "✗", "interrupted": "■"}.get(st.outcome, "…")
        style = {"done": "green", "failed": "red", "interrupted": "yellow"}.get(st.outcome, "cyan")
        line = Text.assemble((f"{symbol} " if mark else "", style), (f"{st.name:<24}", "bold"))
        line.append(f"{st.elapsed():7.1f} s")
        if st.search is not None:
            line.append(f"   {st.search.headline()}")
        if st.outcome in ("failed", "interrupted"):
            line.append(f"   {st.outcome}", style=style)
        return line

    def _render(self) -> RenderableType:
        with self._lock:
            parts: list[RenderableType] = [Text(self.title, style="bold")]
            if self.subtitle:
                parts.append(Text(self.subtitle, style="dim"))
            for st in self.stages:
                if st.outcome == "running":
                    parts.append(Spinner("dots", text=self._stage_line(st, mark=False), style="cyan"))
                else:
                    parts.append(self._stage_line(st))
                if st.search is not None and st.outcome == "running":
                    parts.append(self._trials_table(st.search))
            return Group(*parts)

    def _trials_table(self, search: SearchProgress) -> Table:
        table = Table(box=None, padding=(0, 1), show_edge=False, pad_edge=False)
        for col in ("    trial", "state", "step", search.metric, "best"):
            table.add_column(col, style="dim" if col == "    trial" else None)
        rows = sorted(search.trials.values(), key=lambda r: (r.state != "RUNNING", -r.number))
        for row in sorted(rows[:_SHOWN_TRIALS], key=lambda r: r.number):
            table.add_row(
                f"    {row.number}",
                Text(row.state.lower(), style=_STATE_STYLE.get(row.state, "")),
                row.step,
                "-" if row.metric is None else f"{row.metric:.4f}",
                "-" if row.best is None else f"{row.best:.4f}",
            )
        if len(rows) > _SHOWN_TRIALS:
            table.add_row(f"    (+{len(rows) - _SHOWN_TRIALS} more)", "", "", "", "")
        return table


_active: ProgressView | None = None


def active_view() -> ProgressView | None:
    return _active


def set_active_view(view: ProgressView | None) -> None:
    global _active
    _active = view


def stage(name: str) -> None:
    """The command has moved on to stage ``name`` (a no-op unless a view is showing)."""
    if _active is not None:
        _active.stage(name)


def step_label(kind: str, result: dict[str, Any]) -> str:
    """What one report of a trial means for its model kind: an epoch, a number of trees, a round."""
    if "epoch" in result:
        return f"epoch {int(result['epoch'])}"
    if "trees" in result:
        return f"{int(result['trees'])} trees"
    if "rounds" in result:
        return f"round {int(result['rounds'])}"
    return f"step {int(result.get('training_iteration', 0))}"


def search_callbacks(model: str, kind: str, metric: str, mode: str, num_samples: int) -> list[Any]:
    """The Tune callback feeding the view with this search's trials (none unless a view is showing)."""
    if _active is None:
        return []
    from raymlops._progress_tune import ProgressCallback  # Ray Tune is imported only for a search

    return [ProgressCallback(SearchProgress(model, kind, metric, mode, num_samples))]
