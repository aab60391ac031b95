"""The app's wiring: `create_app`, its lifespan, and `begin_shutdown`.

The routes live by API (``openai.py``, ``ollama.py``, ``admin.py``), the guard
(API key, size limits, per-request metrics) in ``guard.py``, and the one table from
exception to HTTP answer in ``errors.py``.

Shutdown: ``begin_shutdown`` (called when uvicorn starts draining) arms the batcher's
cut-off shortly before the graceful timeout ends, so requests still unanswered get a 503
while their handlers are alive; the lifespan then closes the batcher within what is left.
If a model call was still running, the embedder (or registry) is not closed (that would wait for the
call) and ``app.state.abandoned_work`` is True, so the caller can exit without joining it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from lazyembed import __version__
from lazyembed.registry import Models
from lazyembed.server import admin, ollama, openai
from lazyembed.server.batcher import EmbedderLike
from lazyembed.server.context import ServerConfig, ServerContext, server_settings
from lazyembed.server.docs import install_openapi
from lazyembed.server.errors import install_error_handlers
from lazyembed.server.guard import GuardMiddleware

# The cut-off comes this share of the graceful timeout before its end (answers need time).
_ANSWER_SHARE = 0.1


def create_app(
    embedder: EmbedderLike | Models | None = None,
    *,
    config: ServerConfig | None = None,
    close_embedder: bool | None = None,
    **overrides: Any,
) -> FastAPI:
    """Build the app around ``embedder`` (a default ``lazyembed.Embedder`` when None).

    ``embedder`` is one Embedder (the server serves its model) or a `Models` registry:
    the server then serves its default model and ``config.models``, and with
    ``config.any_model`` any catalogue model or local folder present here, under the
    registry's budget; a request's ``model`` field picks one.
    ``config`` defaults to the embedder's ``settings.server`` with ``overrides`` (its
    field names: ``api_key``, ``batch_wait_ms``, ``models``, ``any_model``, ...) parsed
    on top. ``close_embedder`` (default: only when the app created it) closes the
    embedder or registry at shutdown.
    """
    owned = embedder is None
    if embedder is None:
        from lazyembed.embedder import Embedder

        embedder = Embedder(share="never")  # a server holds its own model
    if config is None:
        config = server_settings(embedder, overrides)
    srv = ServerContext(embedder, config)
    app = FastAPI(
        title="lazyembed",
        version=__version__,
        description="Local sentence embeddings speaking the OpenAI and Ollama APIs.",
        lifespan=_lifespan(srv, owned if close_embedder is None else close_embedder),
    )
    app.state.server = srv
    routers = [module.router for module in (openai, ollama, admin)]
    for router in routers:
        app.include_router(router)
    install_error_handlers(app)
    install_openapi(app, secured=bool(config.api_key))
    app.add_middleware(
        GuardMiddleware,
        api_key=config.api_key,
        max_body_bytes=config.max_body_bytes,
        body_timeout=config.body_timeout,
        metrics=srv.metrics,
        endpoints=frozenset(
            path
            for routes in (app.routes, *(router.routes for router in routers))
            for route in routes
            if isinstance(path := getattr(route, "path", None), str)
        ),
        fast_routes={**openai.FAST_ROUTES, **ollama.FAST_ROUTES},
    )
    return app


def _lifespan(srv: ServerContext, close_embedder: bool) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        srv.models.closed = False
        for batcher in srv.models.batchers():
            batcher.reopen()  # no-op unless this app was started and stopped before
        srv.shutdown_began = None
        app.state.abandoned_work = False
        yield
        # uvicorn runs this once in-flight requests finished or were cancelled.
        srv.models.closed = True
        remaining = srv.graceful_remaining()
        batchers = srv.models.batchers()
        closed = await asyncio.gather(*(b.aclose(timeout=remaining) for b in batchers))
        finished = all(closed)
        app.state.abandoned_work = not finished
        closer = getattr(srv.source, "close", None)
        if close_embedder and callable(closer) and finished:
            await asyncio.to_thread(closer)  # (not after abandoning: it would wait for it)

    return lifespan


def begin_shutdown(app: FastAPI) -> None:
    """The ASGI server stopped accepting requests: start the graceful-timeout clock.

    Call it on the event loop (``lazyembed serve`` does, from uvicorn's ``shutdown``).
    Unanswered requests fail with 503 shortly before the graceful timeout ends; without
    the call, the lifespan allows the whole ``graceful_timeout`` from its own start.
    """
    srv: ServerContext = app.state.server
    if srv.shutdown_began is not None:
        return
    srv.shutdown_began = time.monotonic()
    remaining = srv.graceful_remaining()
    with contextlib.suppress(RuntimeError):  # no running loop (a plain thread): clock only
        for batcher in srv.models.batchers():
            batcher.stop_by(remaining * (1 - _ANSWER_SHARE))
