"""What every endpoint shares: settings, the embedder, the batcher, metrics, model facts.

The server's settings are `ServerSettings` (defaults defined once, in config/settings.py);
``create_app`` keyword overrides are parsed by the same key table as the config file,
so ``api_key="secret "`` is refused at start-up as it would be from a file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from fastapi import Request

from lazyembed.config import KEYS, RENAMED, ServerSettings
from lazyembed.config.durations import KeepAlive, parse_keep_alive
from lazyembed.errors import ConfigError, LazyEmbedError
from lazyembed.models.catalogue import find_entry, names_for
from lazyembed.report import MemoryReport
from lazyembed.server.batcher import Batcher, BatchResult, EmbedderLike
from lazyembed.server.errors import ApiError, echo
from lazyembed.server.metrics import ServerMetrics
from lazyembed.server.wire import poll_disconnected, to_jsonable

#: The server's configuration is its settings group (kept under the old name).
ServerConfig = ServerSettings

_SERVER_KEYS = {key.field: key for key in KEYS.values() if key.group == "server"}


def server_settings(embedder: EmbedderLike, overrides: dict[str, Any]) -> ServerSettings:
    """The embedder's ``settings.server`` with ``overrides`` (field names) parsed on top."""
    base = getattr(getattr(embedder, "settings", None), "server", None)
    settings = base if isinstance(base, ServerSettings) else ServerSettings()
    values: dict[str, Any] = {}
    for name, value in overrides.items():
        if value is None:  # not given, as in load_settings
            continue
        renamed = RENAMED.get(name)
        field = KEYS[renamed].field if renamed in KEYS else name  # batch_max_size → inputs
        key = _SERVER_KEYS.get(field)
        if key is None:
            raise TypeError(f"create_app() got an unexpected setting {name!r}")
        values[field] = key.parse(value, key.name, "create_app")
    return dataclasses.replace(settings, **values)


class ServerContext:
    """The state behind one app (``app.state.server``)."""

    def __init__(self, embedder: EmbedderLike, config: ServerSettings) -> None:
        if config.api_key is not None and config.api_key != config.api_key.strip():
            raise ConfigError("invalid api_key: has leading or trailing whitespace")
        self.embedder = embedder
        self.config = config
        self.metrics = ServerMetrics(embedder)
        self.batcher = Batcher(
            embedder,
            max_inputs=config.batch_max_inputs,
            max_tokens=config.batch_max_tokens,
            wait_ms=config.batch_wait_ms,
            on_batch=self.metrics.observe_batch,
            on_load=self.metrics.load_seconds.observe,
            on_drop=self.metrics.dropped.inc,
        )
        self.shutdown_began: float | None = None  # time.monotonic(), set by begin_shutdown
        self.served = embedder.model_name
        self._dimension: int | None = None
        self._report: dict[str, Any] | None = None

    # ---- model names and facts -----------------------------------------------------------

    def check_model(self, requested: str | None) -> str:
        """The served model's name, or 404 naming what is served."""
        if requested is None or not requested.strip() or requested == self.served:
            return self.served
        entry = find_entry(requested)
        if entry is not None and entry.hub_id == self.served:
            return self.served
        if requested.strip().lower() == self.served.rsplit("/", 1)[-1].lower():
            return self.served
        raise ApiError(
            404,
            f"model {echo(requested)} is not served here; this server serves "
            f"{self.served!r} (aliases: {', '.join(self.aliases())})",
            "model_not_found",
        )

    def aliases(self) -> list[str]:
        """Other names the served model answers to (from the catalogue)."""
        return sorted(set(names_for(self.served)) - {self.served})

    async def dimension(self) -> int:
        if self._dimension is None:
            try:
                self._dimension = await asyncio.to_thread(self.embedder.get_embedding_dimension)
            except LazyEmbedError as exc:
                raise ApiError(
                    503, f"model unavailable: {exc}", "model_unavailable", "server_error"
                ) from None
        return self._dimension

    async def report(self) -> dict[str, Any]:
        """The embedder's model report (where from, ONNX path, size, hash), cached."""
        if self._report is None:
            model_report = getattr(self.embedder, "model_report", None)
            report: dict[str, Any] = {}
            if callable(model_report):
                report = dict(await asyncio.to_thread(model_report))
            self._report = report
        return self._report

    async def details(self) -> dict[str, Any]:
        report = await self.report()
        variant = str(report.get("variant") or "fp32")
        return {
            "format": "onnx",
            "family": "bert",
            "families": ["bert"],
            "parameter_size": str(report.get("parameter_size") or ""),
            "quantization_level": variant.upper(),
        }

    async def memory(self) -> MemoryReport:
        return await asyncio.to_thread(self.embedder.memory_report)

    @staticmethod
    def memory_dict(report: MemoryReport) -> dict[str, Any]:
        """The report as ``get_memory_usage()`` gives it, JSON-safe."""
        body: dict[str, Any] = to_jsonable(report.as_dict())
        return body

    # ---- checks at the edge ----------------------------------------------------------------

    def check_limits(self, texts: list[str]) -> None:
        config = self.config
        if len(texts) > config.max_inputs_per_request:
            raise ApiError(
                413,
                f"{len(texts)} inputs in one request; the limit is {config.max_inputs_per_request}",
                "too_many_inputs",
            )
        limit = config.max_chars_per_input
        for position, text in enumerate(texts):
            if len(text) > limit:
                raise ApiError(
                    413,
                    f"input {position} has {len(text)} characters; the limit is {limit}",
                    "input_too_long",
                )

    async def check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is not None and dimensions != await self.dimension():
            raise ApiError(
                422,
                f"dimensions={dimensions} is not available: this model has "
                f"{await self.dimension()} dimensions",
                "invalid_dimensions",
            )

    @staticmethod
    def keep_alive(value: float | str | None) -> KeepAlive:
        """The request's keep_alive, parsed once here; ``""`` counts as not given."""
        if isinstance(value, str) and not value.strip():
            return KeepAlive.DEFAULT
        try:
            return parse_keep_alive(value, source="request")
        except ConfigError as exc:
            raise ApiError(422, str(exc), "invalid_keep_alive") from None

    # ---- work -------------------------------------------------------------------------------

    async def embed(
        self, texts: list[str], keep_alive: KeepAlive, request: Request, *, truncate: bool = True
    ) -> BatchResult:
        """Embed through the batcher; the tokens are counted in the metrics."""
        gone = Departure(request)
        result = await self.batcher.submit(
            texts, keep_alive=keep_alive, truncate=truncate, is_disconnected=gone
        )
        self.metrics.tokens.inc(sum(result.token_counts))
        return result

    async def warmup(self, keep_alive: KeepAlive) -> float:
        """Load the model with this keep-alive (never from the cache); load seconds."""
        return await self.batcher.warmup(keep_alive)

    async def unload(self) -> bool:
        return await asyncio.to_thread(self.embedder.unload_model)

    def graceful_remaining(self) -> float:
        """Seconds of the graceful timeout left (all of it if nobody said when it began)."""
        timeout = self.config.graceful_timeout
        if self.shutdown_began is None:
            return float(timeout)
        return max(0.0, timeout - (time.monotonic() - self.shutdown_began))


class Departure:
    """Has a request's client gone? (the batcher asks between chunks)

    A closed connection is gone at any time. A half-closed one (the client sent its
    request, then EOF; see `protocol.py`) is still answered if its work has not started,
    and counts as gone between the chunks of a longer request.
    """

    def __init__(self, request: Request) -> None:
        self.receive = request.receive
        extensions = request.scope.get("extensions") or {}
        self.half_closed = extensions.get("lazyembed.half_closed")

    async def __call__(self, started: bool) -> bool:
        if await poll_disconnected(self.receive):
            return True
        return started and callable(self.half_closed) and bool(self.half_closed())


def context(request: Request) -> ServerContext:
    """The app's shared state, from any handler."""
    srv: ServerContext = request.app.state.server
    return srv
