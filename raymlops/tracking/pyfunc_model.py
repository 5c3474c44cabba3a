"""The MLflow ``pyfunc`` model of a raymlops version, logged as code so that it holds no pickle.

MLflow's ``PythonModel`` is cloudpickled by default; this file is instead handed to
``mlflow.pyfunc.log_model(python_model=<this path>)`` ("models from code"): MLflow copies it into
the model and runs it on load, and :func:`mlflow.models.set_model` below names the model object.
``load_context`` loads the raymlops version folder logged next to it as an artifact (after
checking its sha256 sums), and ``predict`` scores raw rows through the same row checks and
preprocessing as ``raymlops score`` and ``raymlops serve``.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from raymlops.tracking._loader import VERSION_ARTIFACT, load_version


class RaymlopsModel(PythonModel):
    """Scores raw rows: a ``prediction`` column and, for classifiers, one ``proba_<class>`` each."""

    def load_context(self, context: Any) -> None:
        self._model = load_version(context.artifacts[VERSION_ARTIFACT])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        # A pd.DataFrame hint leaves input checks to the logged signature (MLflow infers none from it).
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self._model.predict_frame(frame)


mlflow.models.set_model(RaymlopsModel())
