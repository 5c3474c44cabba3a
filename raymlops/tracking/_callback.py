"""A Tune callback that turns each trial into a child MLflow run of the pipeline's run.

Ray ships ``ray.air.integrations.mlflow.MLflowLoggerCallback``, and its ``tags`` could carry
``mlflow.parentRunId``; it is not used because it sends one request per metric per step (plus a
``get_run`` before each), logs Tune's own bookkeeping (pid, hostname, timestamps) as metrics, and
a tracking failure inside it is not contained. This callback sends one batch per step and keeps
no state but the model name: Tune pickles its callbacks into the experiment folder, and a resumed
search then logs to the pipeline run in progress, not to the interrupted one.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from raymlops.tracking._session import active_session

__all__ = ["TrialLogger"]


class TrialLogger(tune.Callback):
    """Forwards Tune's trial events for one model entry to the active tracking session.

    Args:
        model: the model entry's name (``models[].name``), tagged on every child run.
    """

    def __init__(self, model: str) -> None:
        self.model = model

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        session = active_session()
        if session is not None:
            session.trial_started(self.model, trial.trial_id, str(trial), dict(trial.config or {}))

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        session = active_session()
        if session is not None:
            session.trial_result(self.model, trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        session = active_session()
        if session is not None:
            session.trial_ended(self.model, trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        session = active_session()
        if session is not None:
            session.trial_ended(self.model, trial.trial_id, "FAILED")

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        session = active_session()
        if session is not None:
            for trial in trials:
                session.trial_ended(self.model, trial.trial_id, "KILLED")
