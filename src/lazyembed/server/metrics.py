"""Prometheus metrics for one server app, in the app's own ``CollectorRegistry``.

A per-app registry (not prometheus_client's global one) lets several apps live in one
process (tests) without "duplicated timeseries" errors. Request, batch and input figures
are counted as they happen; the models' state, memory and load/unload counters are read
from their typed memory reports at scrape time by a custom collector, so they can never
drift from what the lifecycles themselves counted.
"""

from __future__ import annotations

import math
from collections import Counter as Counter_
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lazyembed.report import MemoryReport

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MB = 1024 * 1024

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_LOAD_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30)


class _ModelsCollector(Collector):
    """Reads the served models' typed memory reports when scraped (they measure RSS/USS:
    not per request). The unlabeled series are totals over the models (with one model:
    that model's); the ``lazyembed_served_model_*`` series carry a ``model`` label."""

    def __init__(self, reports: Callable[[], Sequence[MemoryReport]]) -> None:
        self._reports = reports

    def describe(self) -> list[Metric]:
        return []  # dynamic: nothing to check at registration time

    def collect(self) -> Iterator[Metric]:
        reports = list(self._reports())
        if reports:
            yield from self._totals(reports)
            yield from self._per_model(reports)

    @staticmethod
    def _totals(reports: list[MemoryReport]) -> Iterator[Metric]:
        yield _gauge(
            "lazyembed_model_loaded",
            "Models in memory (with one model: 1 while it is loaded).",
            sum(r.model_loaded for r in reports),
        )
        yield _gauge(
            "lazyembed_model_bytes",
            "Measured bytes the loaded models add to the process (0 when unloaded).",
            sum(r.model_mb for r in reports) * _MB,
        )
        yield _gauge(
            "lazyembed_process_rss_bytes",
            "Resident set size of the server process.",
            reports[-1].process_rss_mb * _MB,
        )
        yield _gauge(
            "lazyembed_process_uss_bytes",
            "Unique set size of the server process.",
            (reports[-1].process_uss_mb or 0.0) * _MB,
        )
        yield _gauge(
            "lazyembed_in_flight",
            "Model calls in progress.",
            sum(r.lifecycle.in_flight for r in reports),
        )
        countdowns = [c for r in reports if (c := r.unload_in_s) is not None and math.isfinite(c)]
        if countdowns:
            yield _gauge(
                "lazyembed_unload_in_seconds",
                "Seconds until the next idle unload (absent while pinned, busy or unloaded).",
                min(countdowns),
            )
        yield _by_reason(
            "lazyembed_model_loads",
            "Model loads by reason (first_use, reload, ...).",
            _summed(r.lifecycle.loads_by_reason for r in reports),
        )
        yield _by_reason(
            "lazyembed_model_unloads",
            "Model unloads by reason (idle, keep_alive, explicit, pressure, budget, ...).",
            _summed(r.lifecycle.unloads_by_reason for r in reports),
        )

    @staticmethod
    def _per_model(reports: list[MemoryReport]) -> Iterator[Metric]:
        loaded = _labelled("loaded", "1 while the model is in memory.")
        size = _labelled("bytes", "Measured bytes the loaded model adds to the process.")
        in_flight = _labelled("in_flight", "The model's calls in progress.")
        countdown = _labelled(
            "unload_in_seconds",
            "Seconds until the model's idle unload (absent while pinned, busy or unloaded).",
        )
        loads = CounterMetricFamily(
            "lazyembed_served_model_loads", "Model loads by model and reason.", labels=_BY_REASON
        )
        unloads = CounterMetricFamily(
            "lazyembed_served_model_unloads",
            "Model unloads by model and reason.",
            labels=_BY_REASON,
        )
        for report in reports:
            model, lifecycle = [report.model], report.lifecycle
            loaded.add_metric(model, float(report.model_loaded))
            size.add_metric(model, report.model_mb * _MB)
            in_flight.add_metric(model, float(lifecycle.in_flight))
            if report.unload_in_s is not None and math.isfinite(report.unload_in_s):
                countdown.add_metric(model, report.unload_in_s)
            for reason, count in sorted(lifecycle.loads_by_reason.items()):
                loads.add_metric([*model, str(reason)], float(count))
            for reason, count in sorted(lifecycle.unloads_by_reason.items()):
                unloads.add_metric([*model, str(reason)], float(count))
        yield from (loaded, size, in_flight, countdown, loads, unloads)


_BY_REASON = ["model", "reason"]


def _labelled(suffix: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"lazyembed_served_model_{suffix}", documentation, labels=["model"])


def _summed(tables: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: Counter_[str] = Counter_()
    for table in tables:
        total.update(table)
    return dict(total)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _by_reason(name: str, documentation: str, counts: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=["reason"])
    for reason, count in sorted(counts.items()):
        family.add_metric([str(reason)], float(count))
    return family


class ServerMetrics:
    """All metrics of one app. Thread-safe (prometheus_client locks each child)."""

    def __init__(self, reports: Callable[[], Sequence[MemoryReport]]) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "lazyembed_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "lazyembed_request_duration_seconds",
            "Time from request arrival to the end of the response, by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "lazyembed_batch_size",
            "Inputs per model call (dynamic batching).",
            buckets=_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_requests = Histogram(
            "lazyembed_batch_requests",
            "HTTP requests coalesced into one model call.",
            buckets=_SIZE_BUCKETS,
            registry=registry,
        )
        self.inputs = Counter(
            "lazyembed_inputs",
            "Texts embedded (rate() gives inputs per second).",
            registry=registry,
        )
        self.tokens = Counter(
            "lazyembed_tokens", "Tokens embedded (after truncation).", registry=registry
        )
        self.load_seconds = Histogram(
            "lazyembed_model_load_seconds",
            "Model load time seen by requests that had to wait for a load.",
            buckets=_LOAD_BUCKETS,
            registry=registry,
        )
        self.dropped = Counter(
            "lazyembed_requests_dropped",
            "Requests dropped before reaching the model because the client went away.",
            registry=registry,
        )
        registry.register(_ModelsCollector(reports))

    def observe_batch(self, inputs: int, requests: int) -> None:
        self.batch_size.observe(inputs)
        self.batch_requests.observe(requests)
        self.inputs.inc(inputs)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> bytes:
        """The exposition text; call it in a thread (the collector measures memory)."""
        return generate_latest(self.registry)
