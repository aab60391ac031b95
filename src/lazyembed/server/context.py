"""What every endpoint shares: settings, the served models (each with its batcher), metrics.

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
from lazyembed.errors import ConfigError
from lazyembed.registry import Models
from lazyembed.report import MemoryReport
from lazyembed.server.batcher import Batcher, BatchResult, EmbedderLike
from lazyembed.server.errors import ApiError
from lazyembed.server.metrics import ServerMetrics
from lazyembed.server.served import ServedModel, ServedModels
from lazyembed.server.wire import poll_disconnected, to_jsonable

#: The server's configuration is its settings group (kept under the old name).
ServerConfig = ServerSettings

_SERVER_KEYS = {key.field: key for key in KEYS.values() if key.group == "server"}


def server_settings(source: EmbedderLike | Models, overrides: dict[str, Any]) -> ServerSettings:
    """The embedder's (or registry's) ``settings.server`` with ``overrides`` (field names)
    parsed on top."""
    base = getattr(getattr(source, "settings", None), "server", None)
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

    def __init__(self, source: EmbedderLike | Models, config: ServerSettings) -> None:
        if config.api_key is not None and config.api_key != config.api_key.strip():
            raise ConfigError("invalid api_key: has leading or trailing whitespace")
        self.source = source
        self.config = config
        self.metrics = ServerMetrics(self._memory_reports)
        self.models = ServedModels(
            source, models=config.models, any_model=config.any_model, make_batcher=self._batcher
        )
        self.shutdown_began: float | None = None  # time.monotonic(), set by begin_shutdown

    def _batcher(self, embedder: EmbedderLike) -> Batcher:
        config = self.config
        return Batcher(
            embedder,
            max_inputs=config.batch_max_inputs,
            max_tokens=config.batch_max_tokens,
            wait_ms=config.batch_wait_ms,
            on_batch=self.metrics.observe_batch,
            on_load=self.metrics.load_seconds.observe,
            on_drop=self.metrics.dropped.inc,
        )

    def _memory_reports(self) -> list[MemoryReport]:
        """Every served model's report (for /metrics; called in a worker thread)."""
        return [served.embedder.memory_report(events=False) for served in self.models.all()]

    # ---- the default model (what a request without ``model`` gets) -----------------------

    @property
    def embedder(self) -> EmbedderLike:
        return self.models.default.embedder

    @property
    def batcher(self) -> Batcher:
        return self.models.default.batcher

    @property
    def served(self) -> str:
        return self.models.default.name

    def check_model(self, requested: str | None) -> ServedModel:
        """The model a request names (absent or empty: the default), or 404 naming
        what is served."""
        return self.models.get(requested)

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

    @staticmethod
    async def check_dimensions(model: ServedModel, dimensions: int | None) -> None:
        if dimensions is not None and dimensions != await model.dimension():
            raise ApiError(
                422,
                f"dimensions={dimensions} is not available: {model.name} has "
                f"{await model.dimension()} dimensions",
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
        self,
        model: ServedModel,
        texts: list[str],
        keep_alive: KeepAlive,
        request: Request,
        *,
        truncate: bool = True,
    ) -> BatchResult:
        """Embed through the model's batcher; the tokens are counted in the metrics."""
        gone = Departure(request)
        result = await model.batcher.submit(
            texts, keep_alive=keep_alive, truncate=truncate, is_disconnected=gone
        )
        self.metrics.tokens.inc(sum(result.token_counts))
        return result

    @staticmethod
    async def warmup(model: ServedModel, keep_alive: KeepAlive) -> float:
        """Load the model with this keep-alive (never from the cache); load seconds."""
        return await model.batcher.warmup(keep_alive)

    async def unload(self, model: ServedModel | None = None) -> bool:
        """Unload one model, or (None) every served model; waits for calls in flight."""
        models = [model] if model is not None else self.models.all()
        done = [await asyncio.to_thread(served.embedder.unload_model) for served in models]
        return any(done)

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
