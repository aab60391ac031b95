"""Prometheus metrics for one server app, in the app's own ``CollectorRegistry``.

A per-app registry (not prometheus_client's global one) lets several apps live in one
process (tests) without "duplicated timeseries" errors. Request, batch and input figures
are counted as they happen; the model's state, memory and load/unload counters are read
from the embedder's typed memory report at scrape time by a custom collector, so they
can never drift from what the lifecycle itself counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lazyembed.report import MemoryReport
from lazyembed.server.batcher import EmbedderLike

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MB = 1024 * 1024

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_LOAD_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30)


class _EmbedderCollector(Collector):
    """Reads the typed memory report when scraped (it measures RSS/USS: not per request)."""

    def __init__(self, embedder: EmbedderLike) -> None:
        self._embedder = embedder

    def describe(self) -> list[Metric]:
        return []  # dynamic: nothing to check at registration time

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._embedder.memory_report(events=False))

    @staticmethod
    def _families(report: MemoryReport) -> Iterator[Metric]:
        lifecycle = report.lifecycle
        yield _gauge(
            "lazyembed_model_loaded", "1 while the model is in memory.", report.model_loaded
        )
        yield _gauge(
            "lazyembed_model_bytes",
            "Measured bytes the loaded model adds to the process (0 when unloaded).",
            report.model_mb * _MB,
        )
        yield _gauge(
            "lazyembed_process_rss_bytes",
            "Resident set size of the server process.",
            report.process_rss_mb * _MB,
        )
        yield _gauge(
            "lazyembed_process_uss_bytes",
            "Unique set size of the server process.",
            (report.process_uss_mb or 0.0) * _MB,
        )
        yield _gauge("lazyembed_in_flight", "Model calls in progress.", lifecycle.in_flight)
        unload_in = report.unload_in_s
        if unload_in is not None and math.isfinite(unload_in):
            yield _gauge(
                "lazyembed_unload_in_seconds",
                "Seconds until the idle unload (absent while pinned, busy or unloaded).",
                unload_in,
            )
        yield _by_reason(
            "lazyembed_model_loads",
            "Model loads by reason (first_use, reload, ...).",
            lifecycle.loads_by_reason,
        )
        yield _by_reason(
            "lazyembed_model_unloads",
            "Model unloads by reason (idle, keep_alive, explicit, pressure, ...).",
            lifecycle.unloads_by_reason,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _by_reason(name: str, documentation: str, counts: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=["reason"])
    for reason, count in sorted(counts.items()):
        family.add_metric([str(reason)], float(count))
    return family


class ServerMetrics:
    """All metrics of one app. Thread-safe (prometheus_client locks each child)."""

    def __init__(self, embedder: EmbedderLike) -> None:
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
        registry.register(_EmbedderCollector(embedder))

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
