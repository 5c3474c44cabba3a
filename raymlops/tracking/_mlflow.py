"""The MLflow side of tracking: the pipeline's run, its trials' child runs, the exported model.

Imported only when tracking is on. One pipeline run is one MLflow run in the experiment named by
``$MLFLOW_EXPERIMENT_NAME`` (default: the pipeline's name):

* at the start: the flattened pipeline file as params, the file itself and its effective JSON as
  artifacts (``pipeline/``), raymlops tags (pipeline, config hash);
* per Tune trial: a child run (tag ``mlflow.parentRunId``) with the sampled params and one batch of
  metrics per step (a block of trees, an epoch);
* at the end: data fingerprint and row counts, held-out metrics of the selected model and of every
  candidate, the gate outcome and reasons, ``report.html``, and the selected model as an MLflow
  ``pyfunc`` model (logged from code, see :mod:`raymlops.tracking.pyfunc_model`) registered under
  the pipeline's name, with the alias raymlops promoted the version to.

Failures: the server is checked before anything trains, and an unusable server stops the run there
(:class:`TrackingError`). A failure later (the server went away) is logged as a warning, turns
tracking off for the rest of the run and is listed in the summary's ``tracking.warnings``; the
model version is registered in the raymlops store whatever MLflow does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raymlops.config import PipelineConfig, config_hash
from raymlops.tracking._loader import VERSION_ARTIFACT, load_version
from raymlops.tracking._session import (
    EXPERIMENT_ENV,
    TRACKING_ENV,
    TrackingError,
    TrackingSession,
    TrackingTarget,
)

__all__ = ["MlflowSession", "flatten", "mirror_alias", "open_session"]

log = logging.getLogger("raymlops")
T = TypeVar("T")

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
MODEL_NAME = "model"
REPORT_FILE = "report.html"
#: Tune's own bookkeeping in every result; not metrics of the model.
_TUNE_KEYS = frozenset(
    {
        "training_iteration",
        "time_this_iter_s",
        "time_total_s",
        "time_since_restore",
        "timestamp",
        "timesteps_total",
        "timesteps_since_restore",
        "episodes_total",
        "iterations_since_restore",
        "pid",
        "node_ip",
        "hostname",
        "date",
        "done",
        "config",
        "trial_id",
        "experiment_tag",
        "checkpoint_dir_name",
        "should_checkpoint",
    }
)
# MLflow's limits on one log_batch request and on a param's value.
_MAX_PARAMS = 100
_MAX_TAGS = 100
_MAX_METRICS = 1000
_MAX_PARAM_VALUE = 6000
_HEALTH_TIMEOUT_S = 5.0
#: Client settings for the run's duration, unless the user set the variables. MLflow retries a
#: failing request 7 times with a backoff of up to minutes, and a run whose server went away must
#: not stall on every call; and it prints two "View run" lines on stdout for every run it ends,
#: one pair per Tune trial here (raymlops logs the parent run's URL once instead).
_CLIENT_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


# ---- helpers ---------------------------------------------------------------------------------
def redact(uri: str) -> str:
    """A URI without the password of its user part (``http://me:secret@h`` -> ``http://me:***@h``)."""
    if "://" not in uri or "@" not in uri:
        return uri
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _key(text: str) -> str:
    """A valid MLflow param/metric/tag key (letters, digits, ``_ - . / : space``)."""
    return "".join(c if c.isalnum() or c in "_-./: " else "_" for c in text)[:250]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config/summary values as ``a.b.c`` keys.

    Lists of mappings are keyed by each item's ``name`` when every item has one (``models.rf.kind``),
    else by position; other lists stay one value (JSON).
    """
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        names = [v.get("name") for v in obj]
        named = all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
        for i, v in enumerate(obj):
            item = {k: x for k, x in v.items() if k != "name"} if named else v
            out.update(flatten(item, f"{prefix}.{names[i] if named else i}"))
    elif isinstance(obj, (list, tuple)):
        out[prefix] = json.dumps(list(obj), default=str)
    else:
        out[prefix] = obj
    return out


def _param_value(value: Any) -> str:
    text = redact(value) if isinstance(value, str) else str(value)
    return text if len(text) <= _MAX_PARAM_VALUE else text[: _MAX_PARAM_VALUE - 3] + "..."


def _numbers(flat: dict[str, Any]) -> dict[str, float]:
    """The finite-or-NaN numeric values (bools are outcomes, not metrics: they become tags)."""
    return {
        k: float(v)
        for k, v in flat.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isinf(float(v))
    }


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@contextmanager
def _client_settings() -> Iterator[None]:
    """:data:`_CLIENT_SETTINGS` for the run's duration, where the user has not set them."""
    added = [name for name in _CLIENT_SETTINGS if name not in os.environ]
    for name in added:
        os.environ[name] = _CLIENT_SETTINGS[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` for model logging, then put back.

    ``mlflow.set_tracking_uri`` also writes ``$MLFLOW_TRACKING_URI`` (for subprocesses); left
    behind, it would turn tracking on for the next run in this process.
    """
    saved = os.environ.get(TRACKING_ENV)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None unsets it (and the variable)
        os.environ.pop(TRACKING_ENV, None)
        if saved is not None:
            os.environ[TRACKING_ENV] = saved


def _check_reachable(target: TrackingTarget) -> None:
    """Fail in seconds, naming the setting, when an HTTP tracking server does not answer."""
    if not target.uri.startswith(("http://", "https://")):
        return
    import httpx

    try:
        httpx.get(target.uri.rstrip("/") + "/health", timeout=_HEALTH_TIMEOUT_S)
    except httpx.HTTPError as err:
        raise TrackingError(
            f"MLflow tracking server {redact(target.uri)} (from {target.source}) is unreachable: {err}. "
            f"Start it, correct {target.source}, or remove it to run without tracking."
        ) from None


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return str(client.create_experiment(name))
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # another run created it meanwhile
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} is deleted; restore it, or set ${EXPERIMENT_ENV} to another name"
        )
    return str(experiment.experiment_id)


def _start_tags(cfg: PipelineConfig, pipeline_file: str | None) -> dict[str, str]:
    tags = {"raymlops.pipeline": cfg.name, "raymlops.config_hash": config_hash(cfg)}
    if pipeline_file:
        tags["raymlops.pipeline_file"] = os.path.abspath(pipeline_file)
    try:  # mlflow.user, mlflow.source.*, git commit: what MLflow's own runs carry
        from mlflow.tracking.context.registry import resolve_tags

        return {k: str(v) for k, v in resolve_tags(tags).items()}
    except Exception:
        return tags


# ---- the model -------------------------------------------------------------------------------
def _column_type(schema: Any, column: str) -> str:
    if column not in schema.categorical:
        return "double"  # the row checks accept any number; MLflow widens int columns to double
    return {"bool": "boolean", "int": "long"}.get(schema.column_types.get(column, "string"), "string")


def _as_type(values: pd.Series, kind: str) -> pd.Series:
    if kind == "double":
        return pd.to_numeric(values, errors="coerce").astype("float64")
    if kind == "boolean":
        return values.astype(str).str.lower().isin(["true", "1"])
    if kind == "long":
        return pd.to_numeric(values, errors="coerce").astype("int64")
    return values.astype(str).astype(object)


def input_example(model: Any, folder: Path, rows: int = 5) -> pd.DataFrame:
    """Raw rows to show (and test) the model with: from the version's reference sample, else made up.

    The reference sample holds training rows (categories as text), so the example is real data;
    a version without one gets one row of zeros and first categories.
    """
    schema = model.schema
    sample_file = folder / "reference_sample.parquet"
    frame = pd.DataFrame()
    if sample_file.exists():
        sample = pd.read_parquet(sample_file)
        if set(schema.features) <= set(sample.columns):
            frame = sample[schema.features].dropna().head(rows).reset_index(drop=True)
    if frame.empty:
        frame = pd.DataFrame(
            {
                c: [(schema.categories.get(c) or [""])[0] if c in schema.categorical else 0.0]
                for c in schema.features
            }
        )
    return pd.DataFrame({c: _as_type(frame[c], _column_type(schema, c)) for c in schema.features})


def model_signature(model: Any, example: pd.DataFrame) -> Any:
    """Inputs from the training schema (every feature, by name), outputs from a real prediction."""
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec(_column_type(model.schema, c), c) for c in model.schema.features])
    with warnings.catch_warnings():  # "integer columns cannot hold missing values": predictions never miss
        warnings.simplefilter("ignore", UserWarning)
        outputs = infer_signature(example, model.predict_frame(example)).outputs
    return ModelSignature(inputs=inputs, outputs=outputs)


def _requirements() -> list[str]:
    """What a loader needs: raymlops (which brings the rest) and the MLflow client that logged it."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for package in ("raymlops", "mlflow-skinny"):
        try:
            reqs.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            reqs.append(package)
    return reqs


# ---- the session -----------------------------------------------------------------------------
class MlflowSession(TrackingSession):
    """One pipeline run tracked in MLflow; see the module docstring for what is logged when.

    Args:
        client: an MLflow client bound to the target.
        target: the tracking URI and the setting that named it.
        experiment: the experiment's name and id.
        run_id: the pipeline's (parent) run.
        pipeline: the pipeline's name (the registered model's name).
    """

    enabled = True

    def __init__(
        self,
        client: MlflowClient,
        target: TrackingTarget,
        experiment: tuple[str, str],
        run_id: str,
        pipeline: str,
    ) -> None:
        self.client = client
        self.target = target
        self.experiment_name, self.experiment_id = experiment
        self.run_id = run_id
        self.pipeline = pipeline
        self.warnings: list[str] = []
        self.registered: dict[str, Any] = {}
        self._trials: dict[tuple[str, str], str] = {}
        self._open_trials: set[tuple[str, str]] = set()
        self._ended = False

    @classmethod
    def start(cls, cfg: PipelineConfig, target: TrackingTarget, pipeline_file: str | None) -> MlflowSession:
        """Check the server, open the parent run and log the config; :class:`TrackingError` if not."""
        _check_reachable(target)
        client = MlflowClient(tracking_uri=target.uri)
        name = os.environ.get(EXPERIMENT_ENV, "").strip() or cfg.name
        try:
            experiment_id = _experiment_id(client, name)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            run = client.create_run(
                experiment_id, run_name=f"{cfg.name}-{stamp}", tags=_start_tags(cfg, pipeline_file)
            )
        except TrackingError:
            raise
        except Exception as err:
            raise TrackingError(
                f"MLflow tracking at {redact(target.uri)} (from {target.source}) cannot be used: {err}"
            ) from None
        session = cls(client, target, (name, experiment_id), run.info.run_id, cfg.name)
        try:
            session._log_config(cfg, pipeline_file)
        except Exception as err:
            session._end_quietly("FAILED")
            raise TrackingError(
                f"MLflow tracking at {redact(target.uri)} (from {target.source}) "
                f"refused the run's config: {err}"
            ) from None
        log.info("tracking in MLflow: %s", session.run_url or f"run {session.run_id}")
        return session

    # ---- failure handling --------------------------------------------------------------------
    @property
    def broken(self) -> bool:
        return bool(self.warnings)

    def _try(self, what: str, fn: Callable[[], T]) -> T | None:
        """Run one MLflow step; the first failure warns and turns the rest of the tracking off."""
        if self.broken:
            return None
        try:
            return fn()
        except Exception as err:
            message = (
                f"MLflow tracking failed while {what} ({type(err).__name__}: {str(err)[:300]}); "
                f"tracking is off for the rest of this run and MLflow run {self.run_id} at "
                f"{redact(self.target.uri)} stays incomplete. Training and the raymlops model store "
                "are not affected."
            )
            log.warning(message)
            self.warnings.append(message)
            return None

    def _end_quietly(self, status: str) -> None:
        with suppress(Exception):
            self.client.set_terminated(self.run_id, status)

    # ---- start -------------------------------------------------------------------------------
    def _log_config(self, cfg: PipelineConfig, pipeline_file: str | None) -> None:
        effective = cfg.model_dump(mode="json", by_alias=True)
        if effective.get("tracking", {}).get("mlflow"):
            effective["tracking"]["mlflow"] = redact(effective["tracking"]["mlflow"])
        # Params leave out the settings that are unset (None); pipeline.json keeps everything.
        flat = flatten(cfg.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"tracking"}))
        params = [Param(_key(k), _param_value(v)) for k, v in flat.items()]
        for chunk in _chunks(params, _MAX_PARAMS):
            self.client.log_batch(self.run_id, params=chunk)
        self.client.log_dict(self.run_id, effective, "pipeline/pipeline.json")
        if pipeline_file and Path(pipeline_file).is_file():
            self.client.log_artifact(self.run_id, str(pipeline_file), "pipeline")

    @property
    def run_url(self) -> str | None:
        if not self.target.uri.startswith(("http://", "https://")):
            return None
        return f"{redact(self.target.uri).rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    # ---- trials ------------------------------------------------------------------------------
    def trial_started(self, model: str, trial_id: str, name: str, config: dict[str, Any]) -> None:
        key = (model, trial_id)
        if key in self._trials:
            return

        def start() -> None:
            tags = {
                "mlflow.parentRunId": self.run_id,
                "raymlops.pipeline": self.pipeline,
                "raymlops.model": model,
                "raymlops.trial_id": trial_id,
                "raymlops.trial_name": name,
            }
            run = self.client.create_run(self.experiment_id, run_name=f"{model}-{trial_id}", tags=tags)
            self._trials[key] = run.info.run_id
            self._open_trials.add(key)
            params = [Param(_key(k), _param_value(v)) for k, v in flatten(config).items()]
            for chunk in _chunks(params, _MAX_PARAMS):
                self.client.log_batch(run.info.run_id, params=chunk)

        self._try(f"starting the child run of trial {trial_id} ({model})", start)

    def trial_result(self, model: str, trial_id: str, result: dict[str, Any]) -> None:
        run_id = self._trials.get((model, trial_id))
        if run_id is None:
            return
        step = int(result.get("training_iteration") or 0)
        stamp = int(time.time() * 1000)
        values = _numbers(flatten({k: v for k, v in result.items() if k not in _TUNE_KEYS}))
        metrics = [Metric(_key(k), v, stamp, step) for k, v in values.items()]
        if metrics:
            self._try(
                f"logging step {step} of trial {trial_id} ({model})",
                lambda: self.client.log_batch(run_id, metrics=metrics[:_MAX_METRICS]),
            )

    def trial_ended(self, model: str, trial_id: str, status: str) -> None:
        key = (model, trial_id)
        if key not in self._open_trials:
            return
        self._open_trials.discard(key)
        self._try(
            f"ending the child run of trial {trial_id} ({model})",
            lambda: self.client.set_terminated(self._trials[key], status),
        )

    # ---- the outcome -------------------------------------------------------------------------
    def log_outcome(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Log what the run produced (see the module docstring); returns the summary's ``tracking``."""
        self._try("logging the run's results", lambda: self._log_results(summary))
        folder = self._try("fetching the registered version from the raymlops store", lambda: _fetch(summary))
        if folder is not None:
            report = folder / REPORT_FILE
            if report.exists():
                self._try("logging report.html", lambda: self.client.log_artifact(self.run_id, str(report)))
            self._try("logging and registering the model", lambda: self._log_model(summary, folder))
        return {"tracking": self.info()}

    def info(self) -> dict[str, Any]:
        """Where the run is in MLflow, what was registered, and any tracking failure."""
        return {
            "mlflow": redact(self.target.uri),
            "experiment": self.experiment_name,
            "experiment_id": self.experiment_id,
            "run_id": self.run_id,
            "run_url": self.run_url,
            "child_runs": len(self._trials),
            **self.registered,
            "warnings": list(self.warnings),
        }

    def _log_results(self, summary: dict[str, Any]) -> None:
        data = summary.get("data", {})
        split = data.get("split", {})
        selected: dict[str, Any] = next(
            (m for m in summary.get("models", []) if m.get("name") == summary.get("selected")), {}
        )
        params = {
            "data.fingerprint": data.get("fingerprint"),
            "data.rows": data.get("rows"),
            **{f"data.rows.{part}": n for part, n in split.items()},
            "selected.model": summary.get("selected"),
            "selected.kind": selected.get("kind"),
            **{f"selected.params.{k}": v for k, v in (selected.get("best_params") or {}).items()},
        }
        metrics = _numbers(flatten(summary.get("metrics", {})))
        for model in summary.get("models", []):
            for k, v in _numbers(flatten(model.get("metrics", {}))).items():
                metrics[f"candidates.{model['name']}.{k}"] = v
            if isinstance(model.get("val_metric"), (int, float)):
                metrics[f"candidates.{model['name']}.val_{summary.get('metric')}"] = float(
                    model["val_metric"]
                )
        if isinstance(summary.get("seconds"), (int, float)):
            metrics["pipeline_seconds"] = float(summary["seconds"])
        gate = summary.get("gate", {})
        tags = {
            "raymlops.data.fingerprint": data.get("fingerprint"),
            "raymlops.gate.passed": str(bool(gate.get("passed"))).lower(),
            "raymlops.gate.reasons": "; ".join(gate.get("reasons") or []),
            "raymlops.selected": summary.get("selected"),
            "raymlops.metric": summary.get("metric"),
            "raymlops.version": summary.get("version"),
            "raymlops.model_ref": f"{summary.get('pipeline')}:{summary.get('version')}",
            "raymlops.store": summary.get("store"),
            "raymlops.promoted": summary.get("promoted") or "",
            "raymlops.not_promoted_because": summary.get("not_promoted_because") or "",
        }
        stamp = int(time.time() * 1000)
        param_list = [Param(_key(k), _param_value(v)) for k, v in params.items() if v is not None]
        for chunk in _chunks(param_list, _MAX_PARAMS):
            self.client.log_batch(self.run_id, params=chunk)
        metric_list = [Metric(_key(k), v, stamp, 0) for k, v in metrics.items()]
        for metric_chunk in _chunks(metric_list, _MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=metric_chunk)
        tag_list = [RunTag(k, _param_value(v)) for k, v in tags.items() if v is not None]
        for tag_chunk in _chunks(tag_list, _MAX_TAGS):
            self.client.log_batch(self.run_id, tags=tag_chunk)
        self.client.log_dict(
            self.run_id, json.loads(json.dumps(summary, default=str)), "raymlops_summary.json"
        )

    def _log_model(self, summary: dict[str, Any], folder: Path) -> None:
        """Log the version as a pyfunc model from code, register it and mirror the alias."""
        from mlflow.models import Model

        model = load_version(folder)
        example = input_example(model, folder)
        signature = model_signature(model, example)
        with _global_tracking_uri(self.target.uri):
            info = Model.log(
                artifact_path=None,
                name=MODEL_NAME,
                flavor=mlflow.pyfunc,
                run_id=self.run_id,
                python_model=str(PYFUNC_FILE),
                artifacts={VERSION_ARTIFACT: str(folder)},
                signature=signature,
                input_example=example,
                pip_requirements=_requirements(),
                metadata={"raymlops_model": f"{summary['pipeline']}:{summary['version']}"},
            )
            gate = summary.get("gate", {})
            registered = mlflow.register_model(
                info.model_uri,
                self.pipeline,
                tags={
                    "raymlops.version": str(summary["version"]),
                    "raymlops.store": str(summary.get("store")),
                    "raymlops.gate.passed": str(bool(gate.get("passed"))).lower(),
                    "raymlops.run_id": self.run_id,
                },
            )
        self.registered = {
            "registered_model": self.pipeline,
            "model_version": str(registered.version),
            "model_uri": f"models:/{self.pipeline}/{registered.version}",
        }
        alias = summary.get("promoted")
        if alias:
            self.client.set_registered_model_alias(self.pipeline, alias, registered.version)
            self.registered["alias"] = alias

    # ---- end ---------------------------------------------------------------------------------
    def end(self, status: str, error: str | None = None) -> None:
        """End the open child runs and the parent run (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        if self._ended:
            return
        self._ended = True
        for model, trial_id in sorted(self._open_trials):
            self.trial_ended(model, trial_id, "KILLED")
        if error:
            self._try(
                "recording the error",
                lambda: self.client.set_tag(self.run_id, "raymlops.error", error[:5000]),
            )
        if self.broken:
            self._end_quietly("FAILED" if status == "FINISHED" else status)
        else:
            self._try("ending the run", lambda: self.client.set_terminated(self.run_id, status))


def _fetch(summary: dict[str, Any]) -> Path:
    """A verified local copy of the version the run registered."""
    from raymlops.registry import ModelStore

    _, folder = ModelStore(summary["store"]).fetch(f"{summary['pipeline']}:{summary['version']}")
    return folder


def mirror_alias(uri: str, name: str, alias: str, version: int, *, store: str | None = None) -> str | None:
    """See :func:`raymlops.tracking.mirror_alias`; raises :class:`TrackingError` when MLflow fails."""
    if "'" in name or "`" in name:
        raise TrackingError(f"model name {name!r} cannot be a registered MLflow model name")
    client = MlflowClient(tracking_uri=uri)
    query = f"name = '{name}' and tags.`raymlops.version` = '{int(version)}'"
    try:
        found = [
            v
            for v in client.search_model_versions(query)
            if store is None or v.tags.get("raymlops.store") == store
        ]
        if not found:
            return None
        latest = max(found, key=lambda v: int(v.version))
        client.set_registered_model_alias(name, alias, latest.version)
    except MlflowException as err:
        raise TrackingError(
            f"could not set MLflow alias {alias!r} of {name!r} at {redact(uri)}: {err}"
        ) from None
    return str(latest.version)


@contextmanager
def open_session(
    cfg: PipelineConfig, target: TrackingTarget, pipeline_file: str | None
) -> Iterator[MlflowSession]:
    """The tracked run's session, ended FINISHED, FAILED (with the error as a tag) or KILLED."""
    with _client_settings():
        session = MlflowSession.start(cfg, target, pipeline_file)
        try:
            yield session
        except KeyboardInterrupt:
            session.end("KILLED", "interrupted")
            raise
        except BaseException as err:
            session.end("FAILED", f"{type(err).__name__}: {err}")
            raise
        session.end("FINISHED")
