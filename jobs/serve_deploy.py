#!/usr/bin/env python
"""Ray job entrypoint: deploy (or update) the Serve application for one or more models.

    ray job submit -- python jobs/serve_deploy.py digits --store s3://raymlops-models/store

Two steps, both through public commands so that the result equals what a person would do by hand:
``raymlops serve config REF... -o FILE`` writes the Serve config (the same text a RayService's
``serveConfigV2`` holds), then ``serve deploy FILE`` hands it to the cluster's Serve controller
through the dashboard (``--dashboard-address``, else ``$RAY_DASHBOARD_ADDRESS``, else
``http://127.0.0.1:8265``; token auth applies as for any client). The job then waits until every
application reports RUNNING, so a job that ends SUCCEEDED means the models answer, and a
deployment that never becomes healthy fails the job instead of passing silently.

Closed by default: every replica must find ``RAYMLOPS_API_KEY`` in its environment (set it on every
node, e.g. from a Kubernetes Secret) or it refuses to start, and the job fails instead of exposing
the models without auth; ``--insecure`` is for an edge that is private by other means. The ingress
(``--ingress``, default auto: HAProxy when the cluster has it) is written into the config.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import yaml


def _run(cmd: list[str]) -> int:
    print(f"[raymlops job] {' '.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=False).returncode


def _statuses(dashboard: str) -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "ray.serve.scripts", "status", "--address", dashboard],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return {}
    doc = yaml.safe_load(proc.stdout) or {}
    apps = doc.get("applications") or {}
    return {name: str(app.get("status", "")) for name, app in apps.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("refs", nargs="+", help="models to serve: NAME, NAME:VERSION or NAME@ALIAS")
    parser.add_argument("--store", help="model store URI; default $RAYMLOPS_STORE")
    parser.add_argument(
        "--config-out", help="where to keep the generated Serve config (default: a temp file)"
    )
    parser.add_argument(
        "--dashboard-address",
        default=os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265"),
        help="the cluster's dashboard URL",
    )
    parser.add_argument(
        "--wait-s", type=float, default=600, help="how long to wait for RUNNING (0: do not wait)"
    )
    parser.add_argument(
        "--ingress", help="auto, haproxy, direct or proxy (default: the model's serve: section)"
    )
    parser.add_argument("--insecure", action="store_true", help="let replicas start without RAYMLOPS_API_KEY")
    ns = parser.parse_args(argv)

    config = ns.config_out or os.path.join(tempfile.mkdtemp(prefix="raymlops-serve-"), "serve.yaml")
    gen = [sys.executable, "-m", "raymlops.cli", "serve", "config", *ns.refs, "-o", config]
    if ns.store:
        gen += ["--store", ns.store]
    if ns.ingress:
        gen += ["--ingress", ns.ingress]
    if ns.insecure:
        gen.append("--insecure")
    rc = _run(gen)
    if rc != 0:
        return rc
    rc = _run(
        [sys.executable, "-m", "ray.serve.scripts", "deploy", config, "--address", ns.dashboard_address]
    )
    if rc != 0 or ns.wait_s <= 0:
        return rc

    deadline = time.monotonic() + ns.wait_s
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        statuses = _statuses(ns.dashboard_address)
        if statuses and all(s == "RUNNING" for s in statuses.values()):
            print(f"[raymlops job] running: {', '.join(sorted(statuses))}", file=sys.stderr)
            return 0
        if any(s == "DEPLOY_FAILED" for s in statuses.values()):
            break
        time.sleep(2)
    print(f"[raymlops job] Serve applications not RUNNING: {statuses or 'no status'}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
