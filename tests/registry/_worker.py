"""A separate writer process for the concurrency tests: ``python _worker.py '<json args>'``.

Every process opens its own ModelStore on the same store URI, waits for a common start time so the
writers really overlap, does its work and prints one JSON result line on stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from raymlops.registry import ModelStore, RegistryConflictError


def _wait(start_at: float) -> None:
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)


def register(args: dict[str, Any]) -> list[dict[str, Any]]:
    """Register ``count`` versions, each with content unique to this writer and iteration."""
    store = ModelStore(args["uri"])
    done = []
    with tempfile.TemporaryDirectory() as tmp:
        _wait(args["start_at"])
        for i in range(args["count"]):
            src = Path(tmp) / f"m{i}"
            (src / "sub").mkdir(parents=True)
            payload = f"{args['writer']}-{i}-".encode() + os.urandom(2048)
            (src / "model.bin").write_bytes(payload)
            (src / "sub" / "prep.json").write_text(json.dumps({"writer": args["writer"], "i": i}))
            mv = store.register(args["name"], src, {"writer": args["writer"], "i": i})
            done.append({"version": mv.version, "sha256": hashlib.sha256(payload).hexdigest(), "i": i})
    return done


def aliases(args: dict[str, Any]) -> list[str]:
    """Set this writer's own aliases one after another, and its shared one each time."""
    store = ModelStore(args["uri"])
    _wait(args["start_at"])
    written = []
    for i in range(args["count"]):
        alias = f"{args['writer']}-{i}"
        store.set_alias(args["name"], alias, 1 + i % args["versions"])
        store.set_alias(args["name"], args["shared"], 1 + i % args["versions"])
        written.append(alias)
    return written


def increment(args: dict[str, Any]) -> dict[str, int]:
    """Move alias ``counter`` one version up ``count`` times by compare-and-swap, retrying conflicts."""
    store = ModelStore(args["uri"])
    _wait(args["start_at"])
    conflicts = 0
    for _ in range(args["count"]):
        while True:
            current = store.aliases(args["name"])["counter"]
            try:
                store.set_alias(args["name"], "counter", current + 1, expected=current)
                break
            except RegistryConflictError:
                conflicts += 1
    return {"conflicts": conflicts}


def die_mid_publish(args: dict[str, Any]) -> None:
    """Register, and SIGKILL this process after the first file has been moved into the version folder."""
    from raymlops.registry import _publish

    real = _publish._move_in

    def move_one_then_die(fs: Any, staging: str, target: str, rels: list[str], moved: list[str]) -> None:
        real(fs, staging, target, rels[:1], moved)
        os.kill(os.getpid(), signal.SIGKILL)

    _publish._move_in = move_one_then_die  # type: ignore[assignment]
    src = Path(args["src"])
    ModelStore(args["uri"]).register(args["name"], src, {"doomed": True})


def die_holding_alias_lock(args: dict[str, Any]) -> None:
    """Start an alias update and SIGKILL this process while it holds the model's alias lock."""
    store = ModelStore(args["uri"])

    def die(current: dict[str, int]) -> None:
        print(json.dumps({"holding": True}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    store.set_alias(args["name"], args["alias"], 1, check=die)


ACTIONS = {
    "register": register,
    "aliases": aliases,
    "increment": increment,
    "die_mid_publish": die_mid_publish,
    "die_holding_alias_lock": die_holding_alias_lock,
}

if __name__ == "__main__":
    parsed = json.loads(sys.argv[1])
    result = ACTIONS[parsed["action"]](parsed)
    print(json.dumps({"result": result}), flush=True)
