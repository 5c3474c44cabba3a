"""The model layer: what a model version is and how raw rows become predictions.

:class:`ModelBundle` is a loaded version (schema, feature plan, predictor, metadata) and its
:meth:`~ModelBundle.score` is the one path from raw rows to checked rows, predictions and
probabilities, used by batch scoring, serving, monitoring, the gate, explanations and the MLflow
export. Model kinds (``keras``, ``random_forest``, ``sklearn``, ``xgboost``) are one module each
behind one small interface (:class:`ModelKind`). Nothing here imports training code.
"""

from raymlops.errors import InputError

from ._bundle import (
    LEGACY_PICKLE_ENV,
    SCHEMA_FILE,
    ModelBundle,
    ScoredRows,
    check_pickle_free,
    prediction_schema,
)
from ._check import RowCheck, UnknownCategory, as_columns, check_rows, input_matrix
from ._features import FEATURES_FILE, FeaturePlan, PlanStep
from ._kinds import ModelKind, Predictor, SavedFiles, available_kinds, get_kind
from ._outputs import (
    PREDICTION,
    PROBA_PREFIX,
    label_dtype,
    labels_from_scores,
    output_columns,
    proba_column,
    proba_columns,
)
from ._schema import ColumnType, TableSchema, Task

__all__ = [
    "FEATURES_FILE",
    "LEGACY_PICKLE_ENV",
    "PREDICTION",
    "PROBA_PREFIX",
    "SCHEMA_FILE",
    "ColumnType",
    "FeaturePlan",
    "InputError",
    "ModelBundle",
    "ModelKind",
    "PlanStep",
    "Predictor",
    "RowCheck",
    "SavedFiles",
    "ScoredRows",
    "TableSchema",
    "Task",
    "UnknownCategory",
    "as_columns",
    "available_kinds",
    "check_pickle_free",
    "check_rows",
    "get_kind",
    "input_matrix",
    "label_dtype",
    "labels_from_scores",
    "output_columns",
    "prediction_schema",
    "proba_column",
    "proba_columns",
]
