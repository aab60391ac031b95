"""Shared set-up of the adapter tests: a fake clock and one Ray cluster.

Ray's start-up costs seconds, so one local cluster serves the whole session (and is shut
down at its end); only the Ray tests ask for it.
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


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local two-CPU Ray cluster for the session's Ray tests."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
