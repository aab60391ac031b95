"""lazyembed's own routes: ``/api/unload``, ``/healthz``, ``/metrics`` and ``/``.

``/api/unload`` takes an optional ``{"model": ...}``; without one it unloads every model.
``/healthz`` and ``/`` (Ollama's liveness probe) never need the API key (see guard.py).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from lazyembed.server.context import context
from lazyembed.server.docs import OLLAMA_AUTH_ERRORS, body_doc, errors_doc
from lazyembed.server.guard import parse_json, read_body
from lazyembed.server.metrics import CONTENT_TYPE
from lazyembed.server.schemas import HealthResponse, OllamaError, UnloadRequest, UnloadResponse
from lazyembed.server.wire import JSONBytes

router = APIRouter()
UNLOAD_ERRORS = errors_doc(OllamaError, 400, 401, 404, 413, 422, 503)


@router.post(
    "/api/unload",
    response_model=None,
    response_class=JSONBytes,
    responses={200: {"model": UnloadResponse}, **UNLOAD_ERRORS},
    openapi_extra=body_doc(UnloadRequest, required=False),
    summary="Unload a model, or every model, now (waits for calls in flight)",
)
async def unload(request: Request) -> Response:
    """Body ``{"model": ...}`` (optional): that model; none, or no body: every model.
    ``memory``: the named model's report (or the default model's)."""
    srv = context(request)
    body = await read_body(request, srv.config.max_body_bytes)
    name = parse_json(body, UnloadRequest).model if body else None
    model = srv.check_model(name) if name and name.strip() else None
    unloaded = await srv.unload(model)
    shown = model if model is not None else srv.models.default
    return JSONBytes({"unloaded": unloaded, "memory": srv.memory_dict(await shown.memory())})


@router.get(
    "/healthz",
    response_model=None,
    response_class=JSONBytes,
    responses={200: {"model": HealthResponse}},
    summary="Liveness (never needs the API key)",
)
async def healthz(request: Request) -> Response:
    loaded = any(model.embedder.is_loaded for model in context(request).models.all())
    return JSONBytes({"status": "ok", "model_loaded": loaded})


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
