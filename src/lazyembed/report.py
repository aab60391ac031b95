"""Typed reports: a Lifecycle's status and an Embedder's memory report.

`MemoryReport` is what the server (`/api/ps`, `/metrics`, the batcher) and the CLI read;
`MemoryReport.as_dict()` is what `get_memory_usage()` returns to users: the same keys as
always (documented in the README). Every figure is measured (psutil), never estimated.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lazyembed.config.durations import KeepAlive


class State(enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"


@dataclass(frozen=True)
class LifecycleStatus:
    """A snapshot of one Lifecycle (taken under its lock, so consistent)."""

    state: State
    model_mb: float  # RSS the last load added; 0 unless loaded
    idle_seconds: float | None  # since the last call finished; None before any call
    idle_timeout: KeepAlive
    unload_in_s: float | None  # None: not loaded, in flight, or no deadline (pinned)
    pinned: bool
    in_flight: int
    waiting: int
    unload_waiting: int
    loads: int
    unloads: int
    load_failures: int
    loads_by_reason: Mapping[str, int]
    unloads_by_reason: Mapping[str, int]
    last_load_ms: float | None
    last_unload: Mapping[str, Any] | None
    watcher_wakeups: int
    events: tuple[Mapping[str, Any], ...]

    @property
    def model_loaded(self) -> bool:
        """LOADED only: a model that is loading or unloading is not reported as loaded."""
        return self.state is State.LOADED

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "model_loaded": self.model_loaded,
            "model_mb": self.model_mb,
            "idle_seconds": self.idle_seconds,
            "idle_timeout_s": None if self.idle_timeout.is_forever else self.idle_timeout.seconds,
            "unload_in_s": self.unload_in_s,
            "pinned": self.pinned,
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "unload_waiting": self.unload_waiting,
            "loads": self.loads,
            "unloads": self.unloads,
            "load_failures": self.load_failures,
            "loads_by_reason": dict(self.loads_by_reason),
            "unloads_by_reason": dict(self.unloads_by_reason),
            "last_load_ms": self.last_load_ms,
            "last_unload": None if self.last_unload is None else dict(self.last_unload),
            "watcher_wakeups": self.watcher_wakeups,
            "events": [dict(e) for e in self.events],
        }


@dataclass(frozen=True)
class MemoryReport:
    """An Embedder's measured memory and lifecycle figures (see `get_memory_usage`)."""

    model: str
    lifecycle: LifecycleStatus
    model_mb: float  # measured: RSS a load added, or the isolated worker's USS
    process_rss_mb: float
    process_uss_mb: float | None
    isolation: str
    cache: Mapping[str, Any] | None = None  # EmbeddingCache.stats()
    pressure: Mapping[str, Any] | None = None  # PressureMonitor.status()
    worker: Mapping[str, Any] | None = None  # the isolated worker's memory_info()

    # The figures every consumer reads, without reaching into `lifecycle`.
    @property
    def model_loaded(self) -> bool:
        return self.lifecycle.model_loaded

    @property
    def state(self) -> State:
        return self.lifecycle.state

    @property
    def unload_in_s(self) -> float | None:
        return self.lifecycle.unload_in_s

    @property
    def pinned(self) -> bool:
        return self.lifecycle.pinned

    @property
    def loads(self) -> int:
        return self.lifecycle.loads

    @property
    def last_load_ms(self) -> float | None:
        return self.lifecycle.last_load_ms

    def as_dict(self) -> dict[str, Any]:
        """The documented `get_memory_usage()` dict (keys unchanged since 0.1)."""
        report = self.lifecycle.as_dict()
        report["model_mb"] = self.model_mb
        report["process_rss_mb"] = self.process_rss_mb
        report["process_uss_mb"] = self.process_uss_mb
        if self.cache is not None:
            report["cache"] = dict(self.cache)
        if self.pressure is not None:
            report["pressure"] = dict(self.pressure)
        report["isolation"] = self.isolation
        if self.isolation == "process":
            report["worker"] = None if self.worker is None else dict(self.worker)
        return report
