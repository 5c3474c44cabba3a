"""Model kinds: one module per kind behind one small interface, looked up by the kind's name.

A kind is a module ``raymlops/model/<kind>.py`` that defines ``KIND``, an object with:

- ``name``: the kind's name as written in the pipeline file (``kind: keras``);
- ``gpu_scoring``: whether batch scoring gives its actors a GPU when there is one;
- ``check_config(model)``: refuse bad ``params``/``search`` at load time (raise ``ValueError``);
- ``wrap(estimator)``: a :class:`Predictor` over a freshly trained estimator;
- ``save(estimator, folder, schema=..., check_X=...)``: write the model files (never a pickle);
- ``load(folder, metadata, threads=...)``: a :class:`Predictor` over saved files.

Training for a kind lives in ``raymlops/train/<kind>.py`` (inference never imports it). Adding a
kind is one new module here plus its trainer; nothing else branches on the kind's name.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from raymlops.errors import ConfigError

from ._schema import TableSchema

__all__ = ["ModelKind", "Predictor", "SavedFiles", "available_kinds", "check_keys", "get_kind"]


class Predictor(Protocol):
    """A loaded model: raw feature matrices in, scores out."""

    def scores(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (n, k) for a classifier, predictions (n,) for a regressor.

        Args:
            X: (n, n_features_out) float32, the output of the version's feature plan.
        """
        ...


@dataclass
class SavedFiles:
    """What a kind wrote into a version folder.

    Attributes:
        files: the file names written (relative to the folder).
        fast_path: a record of any compiled form and whether it was kept (goes into metadata).
    """

    files: list[str]
    fast_path: dict[str, Any] = field(default_factory=dict)


class ModelKind(Protocol):
    name: str
    #: Whether batch scoring should give each actor a GPU when the cluster has them.
    gpu_scoring: bool

    def check_config(self, model: Any) -> None: ...

    def wrap(self, estimator: Any, schema: TableSchema) -> Predictor: ...

    def save(
        self, estimator: Any, folder: Path, *, schema: TableSchema, check_X: np.ndarray | None = None
    ) -> SavedFiles: ...

    def load(
        self, folder: Path, metadata: dict[str, Any], *, schema: TableSchema, threads: int | None = None
    ) -> Predictor: ...


def available_kinds() -> list[str]:
    """Every kind module in this package (without importing them: some import TensorFlow)."""
    import raymlops.model as package

    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def get_kind(name: str) -> ModelKind:
    """The kind named ``name``; raises ConfigError naming the known kinds."""
    if name not in available_kinds():
        raise ConfigError(f"unknown model kind {name!r}; known kinds: {', '.join(available_kinds())}")
    module = importlib.import_module(f"raymlops.model.{name}")
    kind: ModelKind = module.KIND
    return kind


def check_keys(keys: Any, known: Any, where: str, owner: str) -> None:
    """Refuse ``params``/``search`` keys the model does not have, listing the ones it does."""
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise ValueError(f"{where} has unknown parameter(s) {unknown} for {owner}; known: {sorted(known)}")
