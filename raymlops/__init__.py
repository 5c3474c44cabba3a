"""raymlops: one pipeline file from raw tabular data to a gated, versioned model on Ray.

The public API; everything else is internal and may change. Names are imported on first use:
every scoring actor and CLI start imports this package, and eager imports of the pipeline cost
seconds there.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raymlops.config import ConfigError, PipelineConfig, load_pipeline
    from raymlops.errors import InputError, RaymlopsError, UserError
    from raymlops.model import ModelBundle
    from raymlops.pipeline import run_pipeline, validate_pipeline

_EXPORTS = {
    "ConfigError": "raymlops.config",
    "InputError": "raymlops.errors",
    "ModelBundle": "raymlops.model",
    "RaymlopsError": "raymlops.errors",
    "UserError": "raymlops.errors",
    "PipelineConfig": "raymlops.config",
    "load_pipeline": "raymlops.config",
    "run_pipeline": "raymlops.pipeline",
    "validate_pipeline": "raymlops.pipeline",
}

__all__ = [
    "ConfigError",
    "InputError",
    "ModelBundle",
    "PipelineConfig",
    "RaymlopsError",
    "UserError",
    "load_pipeline",
    "run_pipeline",
    "validate_pipeline",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'raymlops' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
