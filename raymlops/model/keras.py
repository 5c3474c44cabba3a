"""``kind: keras``: Keras 3 networks, the built-in MLP or the user's own builder.

Saved in Keras 3's native ``.keras`` format and loaded with ``safe_mode`` on, so loading never
deserializes code (a ``Lambda`` layer is refused; custom layers must be registered serializable
classes importable where the model is loaded). Scoring calls the model through one cached
``tf.function``: ``model.predict`` costs ~140 ms per call here, the compiled call ~0.6 ms.

TensorFlow is imported only when a model is built, loaded or scored.
"""

from __future__ import annotations

import importlib
import weakref
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._kinds import SavedFiles, check_keys
from ._schema import TableSchema

__all__ = ["KERAS_FILE", "KIND", "KerasParams", "KerasTrainingParams", "keras_scores", "resolve_builder"]

KERAS_FILE = "model.keras"
_SCORE_CHUNK = 65536


class KerasTrainingParams(BaseModel):
    """What the training loop itself needs, whichever builder makes the network."""

    model_config = ConfigDict(extra="allow")

    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(20, ge=1)
    seed: int = 0


class KerasParams(KerasTrainingParams):
    """The built-in MLP's parameters (strict: a misspelled key is an error)."""

    model_config = ConfigDict(extra="forbid")

    hidden: list[int] = Field(default_factory=lambda: [64, 32])
    activation: Literal["relu", "tanh", "gelu", "elu", "selu", "sigmoid"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError("hidden layer sizes must be positive")
        return v


def resolve_builder(spec: str, search_path: str | None = None) -> Any:
    """The user's ``package.module:function`` builder, imported from ``search_path`` or sys.path.

    Raises:
        ValueError: the spec is malformed, the module cannot be imported or has no such callable.
    """
    import sys

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise ValueError(f"builder {spec!r} must look like 'package.module:function'")
    added = bool(search_path) and search_path not in sys.path
    if added:
        sys.path.insert(0, str(search_path))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        where = (
            f" (looked beside the pipeline file in {search_path} and on PYTHONPATH)" if search_path else ""
        )
        raise ValueError(f"builder {spec!r}: cannot import module {module_name!r}{where}: {err}") from None
    finally:
        if added:
            sys.path.remove(str(search_path))
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"builder {spec!r}: module {module_name!r} has no function {attr!r}")
    return fn


_PREDICT_FNS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _predict_fn(model: Any) -> Any:
    fn = _PREDICT_FNS.get(model)
    if fn is None:
        import tensorflow as tf

        n_features = int(model.inputs[0].shape[-1])

        @tf.function(input_signature=[tf.TensorSpec([None, n_features], tf.float32)])
        def fn(x: Any) -> Any:
            return model(x, training=False)

        _PREDICT_FNS[model] = fn
    return fn


def keras_scores(model: Any, X: np.ndarray) -> np.ndarray:
    """Class probabilities (n, k) for a classifier, predictions (n,) for a regressor."""
    fn = _predict_fn(model)
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    parts = [np.asarray(fn(X[i : i + _SCORE_CHUNK])) for i in range(0, max(len(X), 1), _SCORE_CHUNK)]
    out = np.concatenate(parts).astype(np.float64) if parts else np.zeros((0,))
    if out.ndim == 2 and out.shape[1] == 1:
        return out.reshape(-1)
    out /= np.clip(out.sum(axis=1, keepdims=True), 1e-12, None)  # exact rows of probabilities
    return out


class _KerasPredictor:
    def __init__(self, model: Any) -> None:
        self.model = model

    def scores(self, X: np.ndarray) -> np.ndarray:
        return keras_scores(self.model, X)


def _set_threads(threads: int | None) -> None:
    if not threads:
        return
    import tensorflow as tf

    try:  # only possible before TensorFlow's context starts
        tf.config.threading.set_intra_op_parallelism_threads(max(1, threads))
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError:
        pass


class KerasKind:
    name = "keras"
    gpu_scoring = True

    def check_config(self, model: Any) -> None:
        params = KerasParams if model.builder is None else KerasTrainingParams
        params.model_validate(model.params)
        if model.builder is None:
            check_keys(model.search, KerasParams.model_fields, "search", "the built-in MLP")
        elif ":" not in model.builder:
            raise ValueError(f"builder {model.builder!r} must look like 'package.module:function'")

    def wrap(self, estimator: Any, schema: TableSchema) -> _KerasPredictor:
        return _KerasPredictor(estimator)

    def save(
        self, estimator: Any, folder: Path, *, schema: TableSchema, check_X: np.ndarray | None = None
    ) -> SavedFiles:
        estimator.save(str(Path(folder) / KERAS_FILE))
        return SavedFiles([KERAS_FILE])

    def load(
        self, folder: Path, metadata: dict[str, Any], *, schema: TableSchema, threads: int | None = None
    ) -> _KerasPredictor:
        path = Path(folder) / KERAS_FILE
        if not path.exists():
            legacy = sorted(p.name for p in Path(folder).glob("*.h5"))
            hint = f" (found {legacy}: HDF5 models are refused, they are not loaded safely)" if legacy else ""
            raise FileNotFoundError(f"{folder} has no {KERAS_FILE}{hint}")
        _set_threads(threads)
        import keras

        return _KerasPredictor(keras.saving.load_model(str(path), safe_mode=True, compile=False))


KIND = KerasKind()
