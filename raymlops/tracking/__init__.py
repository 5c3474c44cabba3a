"""MLflow tracking of pipeline runs, and the winner exported as an MLflow model.

When the pipeline file says ``tracking: {mlflow: URI}`` or ``$MLFLOW_TRACKING_URI`` is set, a
``raymlops run`` becomes one MLflow run (config, data fingerprint, held-out metrics, gate outcome,
``report.html``) with one child run per Tune trial, and the selected model is logged as a ``pyfunc``
model, registered under the pipeline's name and given the alias raymlops promoted it to.

Tracking is optional: with neither set, nothing here imports MLflow (``raymlops validate`` and
``raymlops --help`` stay fast), and the pipeline runs exactly as without this package.
"""

from __future__ import annotations

from raymlops.tracking._session import (
    EXPERIMENT_ENV,
    TRACKING_ENV,
    TrackingError,
    TrackingSession,
    TrackingTarget,
    mirror_alias,
    resolve_target,
    track_pipeline,
    tune_callbacks,
)

__all__ = [
    "EXPERIMENT_ENV",
    "TRACKING_ENV",
    "TrackingError",
    "TrackingSession",
    "TrackingTarget",
    "mirror_alias",
    "resolve_target",
    "track_pipeline",
    "tune_callbacks",
]
