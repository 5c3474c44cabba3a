#!/usr/bin/env python
"""Ray job entrypoint: run a pipeline file on the cluster this job runs on.

The same script runs under ``raymlops submit``, a KubeRay RayJob (``cluster/kuberay/rayjob-digits.yaml``)
and a plain ``ray job submit``::

    ray job submit --working-dir . -- python jobs/run_pipeline.py pipelines/digits.yaml

Why a wrapper around ``raymlops run`` at all: a job's stdout and stderr end up in one log, so the
JSON summary that ``raymlops run --json`` prints would be lost among log lines. This script keeps
the CLI's stdout apart and re-prints the summary as one line starting with ``RAYMLOPS_SUMMARY``,
which ``raymlops submit`` (or anyone reading the job's logs) can pick out. Inside a Ray job,
``RAY_ADDRESS`` points at the cluster, so ``raymlops run`` runs on the cluster, not on an embedded
Ray. The exit code is the CLI's, so the job's status follows the pipeline's outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SUMMARY_PREFIX = "RAYMLOPS_SUMMARY "


def run_cli(args: list[str]) -> int:
    """Run ``raymlops ARGS --json``; print its JSON on one marked line; return its exit code."""
    cmd = [sys.executable, "-m", "raymlops.cli", *args, "--json"]
    print(
        f"[raymlops job] {' '.join(cmd)} (RAY_ADDRESS={os.environ.get('RAY_ADDRESS', '')})", file=sys.stderr
    )
    sys.stderr.flush()
    # stderr (logs, progress) streams straight into the job log; stdout holds only the JSON object.
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    out = proc.stdout.strip()
    if out:
        try:
            summary = json.loads(out)
        except json.JSONDecodeError:
            sys.stderr.write(out + "\n")  # not JSON: show it rather than lose it
        else:
            print(SUMMARY_PREFIX + json.dumps(summary, separators=(",", ":"), default=str), flush=True)
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="pipeline YAML file (relative to the job's working directory)")
    parser.add_argument("--store", help="model store URI; default $RAYMLOPS_STORE, then the file's store:")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted search")
    ns = parser.parse_args(argv)
    args = ["run", ns.pipeline]
    if ns.store:
        args += ["--store", ns.store]
    if ns.resume:
        args.append("--resume")
    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
