"""The pipeline file as pydantic v2 models.

Every model forbids unknown keys: Ray Serve's own config silently drops a misspelled key, and a
pipeline that trains for an hour with ``n_estimatorz`` ignored is worse than one that refuses to
start. :func:`load_pipeline` turns pydantic's errors into one message per problem that names the
file, the place in it (``models[1].params.n_estimatorz``) and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from raymlops.errors import ConfigError

__all__ = [
    "ConfigError",
    "DataConfig",
    "DeployConfig",
    "FairnessConfig",
    "GateConfig",
    "ModelConfig",
    "MonitorConfig",
    "PipelineConfig",
    "PreprocessStep",
    "SearchSpace",
    "ServeOptions",
    "SplitConfig",
    "TrackingConfig",
    "TuneConfig",
    "ValidationConfig",
    "config_hash",
    "load_pipeline",
    "pipeline_json_schema",
    "resolve_metric",
]

CLASSIFICATION_METRICS = ("accuracy", "f1_macro", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")
METRIC_MODES: dict[str, Literal["max", "min"]] = {
    "accuracy": "max",
    "f1_macro": "max",
    "roc_auc": "max",
    "log_loss": "min",
    "rmse": "min",
    "mae": "min",
    "r2": "max",
}

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def resolve_metric(tune_cfg: TuneConfig, task: str) -> tuple[str, Literal["max", "min"]]:
    """The metric trials are ranked by and its direction; refuses a metric that misfits the task."""
    metric = tune_cfg.metric or ("accuracy" if task == "classification" else "rmse")
    if (task == "classification") != (metric in CLASSIFICATION_METRICS):
        raise ConfigError(f"tune.metric {metric!r} does not fit a {task} target")
    return metric, tune_cfg.mode or METRIC_MODES[metric]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SplitConfig(_Strict):
    """How the data is split: the test part is held out for evaluation and the gate only."""

    test_size: float = Field(0.2, gt=0, lt=1)
    validation_size: float = Field(
        0.2, gt=0, lt=1, description="Share of the training part that Tune trials are scored on."
    )
    seed: int = 42
    stratify: bool = True
    key: str | None = Field(
        None,
        description="Column whose hash assigns each row to a part (e.g. an id); default: the row's content",
    )


ColumnType = Literal["float", "int", "category", "bool", "string"]


class DataConfig(_Strict):
    source: str = Field(..., description="builtin://NAME, or a path/URI to a .csv/.parquet file or folder")
    target: str = "target"
    task: Literal["auto", "classification", "regression"] = "auto"
    features: list[str] | None = Field(None, description="Feature columns; default all but target")
    categorical: list[str] | None = Field(
        None, description="Columns treated as categories; default the string/bool columns"
    )
    exclude: list[str] = Field(default_factory=list, description="Columns read but never used as features")
    split: SplitConfig = Field(default_factory=SplitConfig)
    schema_: Literal["infer"] | dict[str, ColumnType] = Field("infer", alias="schema")


class ValidationConfig(_Strict):
    max_null_fraction: float = Field(0.0, ge=0, le=1)
    forbid_constant_columns: bool = Field(
        False,
        description="Refuse constant columns; by default they are left out of the features with a warning",
    )
    min_rows: int = Field(10, ge=1)
    allow_schema_change: bool = Field(
        False,
        description="Train even when the data's schema differs from the champion's "
        "(types, categories, features)",
    )


class ColumnsSpec(_Strict):
    columns: Literal["numeric", "categorical", "all"] | list[str] = "numeric"


class OneHotSpec(_Strict):
    columns: Literal["categorical"] | list[str] = "categorical"
    max_categories: int | None = Field(None, ge=1)


class PreprocessStep(_Strict):
    """One step; exactly one key is set, e.g. ``{standard_scaler: {columns: numeric}}``."""

    standard_scaler: ColumnsSpec | None = None
    min_max_scaler: ColumnsSpec | None = None
    one_hot_encoder: OneHotSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PreprocessStep:
        set_keys = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(set_keys) != 1:
            raise ValueError(
                "each preprocess step needs exactly one of "
                f"{sorted(type(self).model_fields)}, got {set_keys or 'none'}"
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    @property
    def spec(self) -> ColumnsSpec | OneHotSpec:
        return getattr(self, self.kind)


class SearchSpace(_Strict):
    """A Tune search space for one parameter; exactly one key is set."""

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchSpace:
        set_keys = [k for k in ("choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(set_keys) != 1:
            raise ValueError(
                f"a search space needs exactly one of choice/uniform/loguniform/randint, got {set_keys}"
            )
        if self.choice is not None and not self.choice:
            raise ValueError("choice needs at least one value")
        for key in ("uniform", "loguniform", "randint"):
            bounds = getattr(self, key)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{key} bounds must be [low, high] with low < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        return self


class ModelConfig(_Strict):
    """One model entry: its kind, how it trains, its parameters and their search space.

    ``params`` are checked by the kind itself (see :mod:`raymlops.model`): the built-in MLP and
    the forest refuse unknown keys, ``kind: sklearn`` checks them against the estimator's own
    ``get_params()``, a custom Keras ``builder`` receives the keys the training loop does not use.
    """

    name: str
    kind: str = Field(..., description="keras | random_forest | sklearn | xgboost")
    workers: int = Field(
        1, ge=1, description="Training workers (Keras, XGBoost: data-parallel; forest: tree-parallel)"
    )
    use_gpu: Literal["auto"] | bool = "auto"
    max_failures: int = Field(0, ge=-1)
    builder: str | None = Field(
        None, description="kind keras: the user's 'package.module:function' that builds the network"
    )
    estimator: str | None = Field(
        None, description="kind sklearn: the estimator class, e.g. sklearn.linear_model.LogisticRegression"
    )
    params: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, SearchSpace] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.fullmatch(v):
            raise ValueError(f"model name {v!r} must be letters, digits, '_', '-', '.'")
        return v

    @model_validator(mode="after")
    def _params_for_kind(self) -> ModelConfig:
        from raymlops.model import available_kinds, get_kind

        if self.kind not in available_kinds():
            raise ValueError(f"unknown model kind {self.kind!r}; known: {', '.join(available_kinds())}")
        if self.builder is not None and self.kind != "keras":
            raise ValueError("builder is only for kind keras")
        if self.estimator is not None and self.kind != "sklearn":
            raise ValueError("estimator is only for kind sklearn")
        # Validate now so a typo fails at load time with its place; keep the dict for Tune.
        get_kind(self.kind).check_config(self)
        return self


class TuneConfig(_Strict):
    num_samples: int = Field(1, ge=1)
    scheduler: Literal["fifo", "asha"] = "fifo"
    metric: str | None = Field(None, description="Default: accuracy (classification) or rmse (regression)")
    mode: Literal["max", "min"] | None = None
    max_concurrent_trials: int | None = Field(None, ge=1)
    grace_period: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)
    reuse_actors: bool = True
    seed: int | None = Field(0, description="Seed of the random search, so reruns sample the same configs")

    @model_validator(mode="after")
    def _metric_known(self) -> TuneConfig:
        if self.metric is not None:
            if self.metric not in METRIC_MODES:
                raise ValueError(f"unknown metric {self.metric!r}; known: {sorted(METRIC_MODES)}")
            expected = METRIC_MODES[self.metric]
            if self.mode is not None and self.mode != expected:
                raise ValueError(
                    f"metric {self.metric!r} is better when {expected}, but mode is {self.mode!r}"
                )
        return self


class GateConfig(_Strict):
    min: dict[str, float] = Field(default_factory=dict)
    max: dict[str, float] = Field(default_factory=dict)
    beat_champion_by: float | None = None
    metric: str | None = Field(None, description="Metric compared with the champion; default tune.metric")

    @model_validator(mode="after")
    def _metrics_known(self) -> GateConfig:
        for key in [*self.min, *self.max, *([self.metric] if self.metric else [])]:
            if key not in METRIC_MODES and not key.startswith("fairness."):
                raise ValueError(f"unknown metric {key!r} in gate; known: {sorted(METRIC_MODES)}")
        return self


class DeployConfig(_Strict):
    promote_to: str | None = "champion"


class FairnessConfig(_Strict):
    sensitive: str
    use_as_feature: bool = True
    max_demographic_parity_difference: float | None = Field(None, ge=0)
    max_equalized_odds_difference: float | None = Field(None, ge=0)


class MonitorConfig(_Strict):
    psi_drift: float = Field(0.2, gt=0)
    psi_warning: float = Field(0.1, gt=0)
    ks_pvalue: float = Field(0.01, gt=0, lt=1)


class ServeOptions(_Strict):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(16, gt=0)
    max_ongoing_requests: int = Field(100, ge=1)
    max_batch_size: int = Field(64, ge=1)
    batch_wait_timeout_s: float = Field(0.002, ge=0)
    num_cpus: float = Field(0.5, gt=0)
    request_log_sample_rate: float = Field(0.0, ge=0, le=1)
    # [serve] how HTTP reaches the replicas; see raymlops/serve/_ingress.py
    ingress: Literal["auto", "haproxy", "direct", "proxy"] = "auto"
    # [serve] Serve's own per-request HTTP metrics (serve_num_http_requests...) from HAProxy's
    # request log; raymlops's per-model metrics come from the replicas either way
    ingress_metrics: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> ServeOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self


# [tracking] MLflow tracking settings; the logic lives in raymlops/tracking/.
class TrackingConfig(_Strict):
    """Where a run is tracked besides the model store (``MLFLOW_TRACKING_URI`` does the same)."""

    mlflow: str | None = Field(
        None,
        description="MLflow tracking URI (http://HOST:5000, sqlite:///mlflow.db, databricks); "
        "wins over $MLFLOW_TRACKING_URI",
    )


class PipelineConfig(_Strict):
    name: str
    data: DataConfig
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    preprocess: list[PreprocessStep] = Field(default_factory=list)
    models: list[ModelConfig] = Field(..., min_length=1)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    fairness: FairnessConfig | None = None
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    serve: ServeOptions = Field(default_factory=ServeOptions)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)  # [tracking]
    store: str | None = Field(None, description="Model store URI; --store and $RAYMLOPS_STORE override it")
    storage_path: str | None = Field(
        None, description="Ray Train/Tune storage; must be reachable from every node on a cluster"
    )
    #: The pipeline file's folder: user modules (a Keras ``builder``) are imported from there.
    _base_dir: str | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> str | None:
        return self._base_dir

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.fullmatch(v):
            raise ValueError(f"pipeline name {v!r} must be letters, digits, '_', '-', '.' (at most 64)")
        return v

    @model_validator(mode="after")
    def _unique_models(self) -> PipelineConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, repeated: {dupes}")
        return self


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p not in ("function-after",))
        where = _format_loc(loc)
        if e["type"] == "extra_forbidden":
            lines.append(
                f"{source}: {where}: unknown key {str(loc[-1])!r} (misspelled? it is not part of the schema)"
            )
        elif e["type"] == "missing":
            lines.append(f"{source}: {where}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def parse_pipeline(raw: Any, source: str = "<pipeline>") -> PipelineConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the pipeline file must be a mapping at the top level")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


class _StrictLoader(yaml.SafeLoader):
    """YAML that means one thing: no repeated keys, no anchors or aliases.

    A repeated key is silently resolved by PyYAML (a second, empty ``gate:`` would drop the
    accuracy floor); aliases can expand a small file into a huge one (an "alias bomb") that would
    then be copied into every version's metadata.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "aliases (*name) are not allowed in pipeline files; repeat the value",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"key {key!r} appears twice (first at line {seen[key].line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)


def read_yaml(text: str, source: str) -> Any:
    """Parse YAML with :class:`_StrictLoader`; errors name the file, line and problem."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML file; relative data paths resolve against the file's folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read pipeline file {path}: {err.strerror or err}") from None
    cfg = parse_pipeline(read_yaml(text, str(path)), str(path))
    cfg._base_dir = str(path.resolve().parent)
    src = cfg.data.source
    if "://" not in src and not Path(src).is_absolute():
        candidate = (path.parent / src).resolve()
        if candidate.exists() or not Path(src).exists():
            cfg.data.source = str(candidate)
        else:
            cfg.data.source = str(Path(src).resolve())
    return cfg


def config_hash(cfg: PipelineConfig) -> str:
    """Stable hash of the effective configuration, recorded in each version's lineage.

    Where a run is tracked (``tracking``) does not change the model, so it is left out.
    """
    payload = json.dumps(cfg.model_dump(mode="json", by_alias=True, exclude={"tracking"}), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def pipeline_json_schema() -> dict[str, Any]:
    return PipelineConfig.model_json_schema(by_alias=True)
