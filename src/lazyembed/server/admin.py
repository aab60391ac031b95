"""lazyembed's own routes: ``/api/unload``, ``/healthz``, ``/metrics`` and ``/``.

``/healthz`` and ``/`` (Ollama's liveness probe) never need the API key (see guard.py).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from lazyembed.server.context import context
from lazyembed.server.docs import OLLAMA_AUTH_ERRORS
from lazyembed.server.metrics import CONTENT_TYPE
from lazyembed.server.schemas import HealthResponse, UnloadResponse
from lazyembed.server.wire import JSONBytes

router = APIRouter()


@router.post(
    "/api/unload",
    response_model=None,
    response_class=JSONBytes,
    responses={200: {"model": UnloadResponse}, **OLLAMA_AUTH_ERRORS},
    summary="Unload the model now (waits for calls in flight)",
)
async def unload(request: Request) -> Response:
    srv = context(request)
    unloaded = await srv.unload()
    return JSONBytes({"unloaded": unloaded, "memory": srv.memory_dict(await srv.memory())})


@router.get(
    "/healthz",
    response_model=None,
    response_class=JSONBytes,
    responses={200: {"model": HealthResponse}},
    summary="Liveness (never needs the API key)",
)
async def healthz(request: Request) -> Response:
    return JSONBytes({"status": "ok", "model_loaded": bool(context(request).embedder.is_loaded)})


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses=OLLAMA_AUTH_ERRORS,
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    body = await asyncio.to_thread(context(request).metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


@router.get(
    "/",
    response_class=PlainTextResponse,
    summary="Ollama's liveness probe (never needs the API key)",
)
async def root() -> Response:
    return PlainTextResponse("lazyembed is running")
