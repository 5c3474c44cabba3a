"""scikit-learn estimators saved with skops, loaded only when every type in the file is trusted.

skops stores an estimator as plain data (arrays, numbers, strings) plus the names of the types to
rebuild; unlike pickle, loading calls no arbitrary code. Which types may be rebuilt is decided here,
by the loader, never by the file: anything from scikit-learn itself, plus the one estimator class
the version declares when it is an installed scikit-learn-compatible estimator.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from raymlops.errors import TrustError

__all__ = ["SKOPS_FILE", "load_estimator", "save_estimator"]

SKOPS_FILE = "model.skops"
_TRUSTED_PREFIXES = ("sklearn.",)


def save_estimator(estimator: Any, folder: Path) -> str:
    import skops.io as sio

    sio.dump(estimator, Path(folder) / SKOPS_FILE)
    return SKOPS_FILE


def _declared_class_ok(path: str) -> bool:
    """Whether ``module.Class`` is an importable scikit-learn estimator class."""
    module_name, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        return False
    from sklearn.base import BaseEstimator

    return isinstance(cls, type) and issubclass(cls, BaseEstimator)


def load_estimator(folder: Path, declared: str | None = None) -> Any:
    """The estimator in ``folder``, refusing any type scikit-learn does not define.

    Args:
        folder: the version folder.
        declared: the estimator class path the version records (``sklearn.ensemble.X``, or a
            third-party scikit-learn-compatible class), trusted when it is an installed estimator.

    Raises:
        TrustError: the file names a type outside the trusted set.
    """
    import skops.io as sio

    path = Path(folder) / SKOPS_FILE
    untrusted = sio.get_untrusted_types(file=path)
    refused = [
        t
        for t in untrusted
        if not t.startswith(_TRUSTED_PREFIXES) and not (t == declared and _declared_class_ok(t))
    ]
    if refused:
        raise TrustError(f"{path}: refusing to load types that are not trusted estimator types: {refused}")
    return sio.load(path, trusted=untrusted)
