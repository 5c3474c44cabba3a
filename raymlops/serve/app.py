"""Stable import path of the Serve application builder: ``raymlops.serve.app:build_app``.

Serve configs and RayService manifests name this path; the implementation may move, this may not.
"""

from ._app import build_app

__all__ = ["build_app"]
