"""raymlops: one pipeline file from raw tabular data to a gated, versioned model on Ray.

The public API; everything else is internal and may change.
"""

from raymlops.bundle import InputError, ModelBundle
from raymlops.config import ConfigError, PipelineConfig, load_pipeline
from raymlops.pipeline import run_pipeline, validate_pipeline

__all__ = [
    "ConfigError",
    "InputError",
    "ModelBundle",
    "PipelineConfig",
    "load_pipeline",
    "run_pipeline",
    "validate_pipeline",
]
__version__ = "0.1.0"
