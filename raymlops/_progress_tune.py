"""The Ray Tune callback that feeds :mod:`raymlops._progress` (apart, so that importing the view
does not import Ray)."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from raymlops import _progress
from raymlops._progress import _STATE_STYLE, SearchProgress, TrialRow, step_label

__all__ = ["ProgressCallback"]


class ProgressCallback(Callback):  # type: ignore[misc]
    """Trial states, steps and metrics of one Tune run, into the active :class:`ProgressView`.

    Tune calls it on the driver's main thread between its own steps, so it only updates a few
    fields; drawing happens on the view's refresh thread. Tune pickles its run config with the
    experiment, so the callback holds no reference to the view (which holds the terminal).
    """

    def __init__(self, progress: SearchProgress) -> None:
        self.progress = progress

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        if total_num_samples:
            self.progress.total = total_num_samples
        view = _progress.active_view()
        if view is not None:
            view.search(self.progress)

    def _row(self, trial: Any) -> TrialRow:
        rows = self.progress.trials
        if trial.trial_id not in rows:
            rows[trial.trial_id] = TrialRow(len(rows) + 1)
        row = rows[trial.trial_id]
        row.state = str(trial.status)
        return row

    def _finished(self, trial: Any, state: str) -> None:
        row = self._row(trial)
        row.state = state
        view = _progress.active_view()
        if view is not None:
            view.trial_line(self.progress, row)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._row(trial)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        row = self._row(trial)
        first = not row.step
        row.state = "RUNNING"
        row.step = step_label(self.progress.kind, result)
        value = result.get(self.progress.metric)
        if isinstance(value, (int, float)):
            row.metric = float(value)
            if self.progress.better(row.metric, row.best):
                row.best = row.metric
            if self.progress.better(row.metric, self.progress.best):
                self.progress.best = row.metric
        view = _progress.active_view()
        if first and view is not None:
            view.trial_line(self.progress, row)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._finished(trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._finished(trial, "ERROR")

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        for trial in trials:  # states Tune changed without a callback (paused, pending again)
            row = self.progress.trials.get(trial.trial_id)
            if row is not None and str(trial.status) in _STATE_STYLE:
                row.state = str(trial.status)
