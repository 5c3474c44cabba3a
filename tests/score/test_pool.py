"""Sizing the scoring actor pool: one actor per core or GPU, never a pool that starves Ray Data."""

from __future__ import annotations

import pytest

from raymlops.cluster import ClusterInfo
from raymlops.score import pool_size


def _cluster(cpus: float, gpus: float = 0.0, embedded: bool = False) -> ClusterInfo:
    return ClusterInfo(address=None, embedded=embedded, cpus=cpus, gpus=gpus, nodes=1)


def test_keras_takes_one_gpu_per_actor_when_the_cluster_has_gpus() -> None:
    size = pool_size(_cluster(cpus=16, gpus=2), "keras", n_units=40)
    assert (size.actors, size.gpus_per_actor) == (2, 1.0)
    cpu_only = pool_size(_cluster(cpus=16, gpus=2), "random_forest", n_units=40)
    assert cpu_only.gpus_per_actor == 0.0 and cpu_only.actors == 15


def test_a_two_cpu_cluster_keeps_a_cpu_free_for_ray_data() -> None:
    """2 actors × 1 CPU on 2 CPUs deadlocked here: actors reserve fractions instead."""
    size = pool_size(_cluster(cpus=2), "random_forest", n_units=10, workers=2)
    assert size.actors == 2 and size.actors * size.cpus_per_actor < 2


@pytest.mark.parametrize(("rows", "expected"), [(5_000, 1), (150_000, 2), (10_000_000, 6), (None, 6)])
def test_small_inputs_start_fewer_actors(rows: int | None, expected: int) -> None:
    """Starting an actor costs seconds; a 5,000-row input is scored faster by one."""
    assert pool_size(_cluster(cpus=8), "random_forest", n_units=6, rows=rows).actors == expected
    assert pool_size(_cluster(cpus=8), "random_forest", n_units=6, workers=3, rows=5_000).actors == 3


def test_never_more_actors_than_units() -> None:
    assert pool_size(_cluster(cpus=64), "random_forest", n_units=3).actors == 3
