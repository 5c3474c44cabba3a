"""Ray Train backend that gives Keras workers their ``TF_CONFIG``, without importing TensorFlow.

Why not Ray's ``TensorflowConfig``: ``ray.train.tensorflow`` imports TensorFlow in its package
``__init__``, and Ray unpickles the backend config in the Tune trial actor and in the Train
controller. Each trial then paid two TensorFlow imports (~3.4 s each here) in processes that never
run a TensorFlow op; with three trials at once on two cores that was ~10 s of the demo's search.
This backend does what ``TensorflowConfig`` does for raymlops's loop (one ``TF_CONFIG`` per worker,
read by ``MultiWorkerMirroredStrategy`` for its all-reduce) and nothing else: it does not set
``TF_USE_LEGACY_KERAS``, since raymlops trains with Keras 3.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

import ray
from ray.train.backend import Backend, BackendConfig

__all__ = ["KerasCollectiveConfig"]


@dataclass
class KerasCollectiveConfig(BackendConfig):
    """The backend config a Keras worker group runs under (no options)."""

    @property
    def backend_cls(self) -> type[Backend]:
        return _KerasCollectiveBackend


def _worker_address() -> str:
    """This worker's node address and a free port for its collective server."""
    ip = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _set_tf_config(addresses: list[str], index: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
    )


class _KerasCollectiveBackend(Backend):
    def on_start(self, worker_group: Any, backend_config: BackendConfig) -> None:
        addresses = worker_group.execute(_worker_address)
        ray.get(
            [
                worker_group.execute_single_async(i, _set_tf_config, addresses=addresses, index=i)
                for i in range(len(worker_group))
            ]
        )
