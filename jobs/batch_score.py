#!/usr/bin/env python
"""Ray job entrypoint: batch-score a dataset with a registered model on the cluster.

    ray job submit --working-dir . -- \\
        python jobs/batch_score.py digits@champion --input s3://bucket/new/ --output s3://bucket/scored/

Input and output must be reachable from every node (object storage or a shared filesystem): Ray
Data reads and writes from whichever worker runs a block. The JSON summary of ``raymlops score
--json`` (rows, quarantined rows, output files) is re-printed as one ``RAYMLOPS_SUMMARY`` line, and
the exit code is the CLI's, so the job fails when scoring fails.
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
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    out = proc.stdout.strip()
    if out:
        try:
            summary = json.loads(out)
        except json.JSONDecodeError:
            sys.stderr.write(out + "\n")
        else:
            print(SUMMARY_PREFIX + json.dumps(summary, separators=(",", ":"), default=str), flush=True)
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", help="NAME (its champion), NAME:VERSION or NAME@ALIAS")
    parser.add_argument("--input", required=True, help="URI of the rows to score (file or folder)")
    parser.add_argument("--output", required=True, help="URI to write the scored rows to")
    parser.add_argument("--store", help="model store URI; default $RAYMLOPS_STORE")
    parser.add_argument("--rejected", help="URI for rejected rows (default <output>/_rejected)")
    parser.add_argument("--resume", action="store_true", help="finish an interrupted job in OUTPUT")
    parser.add_argument(
        "--allow-legacy-pickle",
        action="store_true",
        help="load a version written with pickled files by an older raymlops (trusted stores only)",
    )
    ns = parser.parse_args(argv)
    args = ["score", ns.ref, "--input", ns.input, "--output", ns.output]
    if ns.store:
        args += ["--store", ns.store]
    if ns.rejected:
        args += ["--rejected", ns.rejected]
    if ns.resume:
        args.append("--resume")
    if ns.allow_legacy_pickle:
        args.append("--allow-legacy-pickle")
    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
