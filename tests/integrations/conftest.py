"""Shared set-up of the adapter tests: a fake clock and a Ray cluster.

Ray's start-up costs seconds, so one local cluster serves a whole test module, and is
shut down when that module ends: its processes (raylet, GCS, workers) must not share
the CPU with the rest of the suite, whose tests bound CPU time and call timeouts. Only
test_ray.py asks for it, so it starts once per session all the same.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


class FakeClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local two-CPU Ray cluster for a module's Ray tests, shut down after them."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
