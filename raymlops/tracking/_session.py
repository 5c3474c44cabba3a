"""Whether a pipeline run is tracked, and the session that the pipeline and Tune talk to.

This module imports neither MLflow nor Ray: it is imported on every ``raymlops run`` and decides,
from the pipeline file and the environment, whether MLflow is needed at all.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raymlops.errors import ConfigError

if TYPE_CHECKING:
    from raymlops.config import PipelineConfig

__all__ = [
    "EXPERIMENT_ENV",
    "TRACKING_ENV",
    "TrackingError",
    "TrackingSession",
    "TrackingTarget",
    "active_session",
    "mirror_alias",
    "resolve_target",
    "track_pipeline",
    "tune_callbacks",
]

#: MLflow's own convention: setting it turns tracking on.
TRACKING_ENV = "MLFLOW_TRACKING_URI"
#: MLflow's own convention for the experiment; raymlops defaults to the pipeline's name.
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"


class TrackingError(ConfigError):
    """MLflow tracking was asked for but cannot be used (not installed, server unreachable).

    A :class:`~raymlops.errors.ConfigError` (the setting that asked for tracking is what to fix),
    with the status of an upstream failure.
    """

    http_status = 502


@dataclass(frozen=True)
class TrackingTarget:
    """Where a run is tracked and which setting asked for it (named in every error message)."""

    uri: str
    source: str


class TrackingSession:
    """The session of an untracked run: every hook is a no-op.

    :class:`raymlops.tracking._mlflow.MlflowSession` overrides the hooks; the pipeline calls them
    the same way whether tracking is on or off.
    """

    enabled = False

    def log_outcome(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Log a finished run's summary; returns what to add to the summary (nothing when off)."""
        return {}

    def trial_started(self, model: str, trial_id: str, name: str, config: dict[str, Any]) -> None:
        """A Tune trial of ``model`` started with its sampled ``config``."""

    def trial_result(self, model: str, trial_id: str, result: dict[str, Any]) -> None:
        """A Tune trial reported one step."""

    def trial_ended(self, model: str, trial_id: str, status: str) -> None:
        """A Tune trial ended: ``FINISHED``, ``FAILED`` or ``KILLED``."""


_NO_TRACKING = TrackingSession()
_active: TrackingSession | None = None


def resolve_target(cfg: PipelineConfig, pipeline_file: str | None = None) -> TrackingTarget | None:
    """The tracking target of a run, or None when tracking is off.

    The pipeline file's ``tracking.mlflow`` wins over ``$MLFLOW_TRACKING_URI``, as MLflow's own
    ``set_tracking_uri`` wins over the variable: the file is the more specific setting.
    """
    from_file = (cfg.tracking.mlflow or "").strip()
    if from_file:
        where = f" in {pipeline_file}" if pipeline_file else ""
        return TrackingTarget(from_file, f"tracking.mlflow{where}")
    from_env = os.environ.get(TRACKING_ENV, "").strip()
    if from_env:
        return TrackingTarget(from_env, f"${TRACKING_ENV}")
    return None


@contextmanager
def track_pipeline(cfg: PipelineConfig, *, pipeline_file: str | None = None) -> Iterator[TrackingSession]:
    """Track one pipeline run in MLflow, or do nothing when tracking is off.

    On entry the tracking server is checked and the parent run is opened, so an unreachable server
    fails the run before anything trains (:class:`TrackingError`). Later tracking failures only
    warn: they never cost the trained model. On exit the run is ended FINISHED, or FAILED (KILLED
    on Ctrl-C) when the pipeline raised.

    Yields:
        The session; its hooks are no-ops when tracking is off.
    """
    global _active
    target = resolve_target(cfg, pipeline_file)
    if target is None:
        yield _NO_TRACKING
        return
    if importlib.util.find_spec("mlflow") is None:
        raise TrackingError(
            f"MLflow tracking is on ({target.source} is {target.uri!r}) but MLflow is not installed: "
            f"pip install 'raymlops[mlflow]', or remove {target.source} to run without tracking"
        )
    from raymlops.tracking._mlflow import open_session

    with open_session(cfg, target, pipeline_file) as session:
        _active = session
        try:
            yield session
        finally:
            _active = None


def active_session() -> TrackingSession | None:
    """The session of the pipeline run in progress in this process, if it is tracked."""
    return _active


def tune_callbacks(model: str) -> list[Any]:
    """Tune callbacks that log each trial of ``model``'s search as a child run (none when off)."""
    if _active is None:
        return []
    from raymlops.tracking._callback import TrialLogger

    return [TrialLogger(model)]


def mirror_alias(name: str, alias: str, version: int, *, store: str | None = None) -> str | None:
    """Point MLflow's ``alias`` of model ``name`` at the MLflow version of raymlops ``name:version``.

    For ``raymlops models promote``: raymlops aliases and MLflow's stay the same. Does nothing (and
    imports nothing) unless ``$MLFLOW_TRACKING_URI`` is set; with several stores registering under
    one name, ``store`` picks the version that came from that store.

    Returns:
        The MLflow version the alias now names, or None when tracking is off or the raymlops
        version was never logged to MLflow.
    """
    uri = os.environ.get(TRACKING_ENV, "").strip()
    if not uri or importlib.util.find_spec("mlflow") is None:
        return None
    from raymlops.tracking._mlflow import mirror_alias as _mirror

    return _mirror(uri, name, alias, version, store=store)
