"""Online serving with Ray Serve: TF Serving REST and Open Inference Protocol v2 for registered models.

``raymlops serve REF...`` runs :func:`start_server`; ``raymlops serve config REF... -o FILE`` writes
:func:`write_serve_config`; a Serve config or RayService imports :func:`build_app`
(``raymlops.serve.app:build_app``). Predictions go through :meth:`raymlops.model.ModelBundle.score`,
like batch scoring, so both give the same answer for the same row.
"""

from ._app import APP_NAME, AppArgs, CanarySpec, LiveSettings, ModelServer, build_app, parse_canary
from ._auth import API_KEY_ENV
from ._config import BUILDER_IMPORT_PATH, ServeHandle, serve_config, start_server, write_serve_config
from ._protocols import ClientError
from ._scoring import score_batch

__all__ = [
    "API_KEY_ENV",
    "APP_NAME",
    "BUILDER_IMPORT_PATH",
    "AppArgs",
    "CanarySpec",
    "ClientError",
    "LiveSettings",
    "ModelServer",
    "ServeHandle",
    "build_app",
    "parse_canary",
    "score_batch",
    "serve_config",
    "start_server",
    "write_serve_config",
]
