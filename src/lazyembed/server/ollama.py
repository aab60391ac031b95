"""Ollama's API: ``/api/embed``, ``/api/embeddings``, ``/api/ps``, ``/api/tags``, ``/api/version``.

A request's ``model`` picks one of the served models (absent or empty: the default).
Ollama's idiom "empty input" loads the model with the given keep-alive (through the
lifecycle, never answered by the embedding cache), and with ``keep_alive: 0`` unloads it
now (an explicit unload, like ``POST /api/unload``).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lazyembed import __version__
from lazyembed.config.durations import KeepAlive
from lazyembed.report import MemoryReport
from lazyembed.server.context import ServerContext, context
from lazyembed.server.docs import OLLAMA_AUTH_ERRORS, OLLAMA_EMBED_ERRORS, body_doc
from lazyembed.server.guard import Handler, read_json
from lazyembed.server.schemas import (
    OllamaEmbeddingsRequest,
    OllamaEmbeddingsResponse,
    OllamaEmbedRequest,
    OllamaEmbedResponse,
    PsResponse,
    TagsResponse,
)
from lazyembed.server.served import ServedModel, rfc3339
from lazyembed.server.wire import FloatArray, JSONBytes

router = APIRouter()
_MB = 1024 * 1024


async def load_or_unload(srv: ServerContext, model: ServedModel, keep_alive: KeepAlive) -> float:
    """Ollama's idiom for an empty input: keep_alive 0 unloads, anything else loads.

    Loads through the lifecycle with the request's lease (``warmup``), not by embedding
    "": that is answered from the cache once seen, loading nothing. The load seconds.
    """
    if keep_alive == KeepAlive.after(0):
        await srv.unload(model)
        return 0.0
    return await srv.warmup(model, keep_alive)


@router.post(
    "/api/embed",
    response_model=None,
    response_class=JSONBytes,
    responses={200: {"model": OllamaEmbedResponse}, **OLLAMA_EMBED_ERRORS},
    openapi_extra=body_doc(OllamaEmbedRequest),
    summary="Ollama embed",
)
async def embed(request: Request) -> Response:
    start = time.perf_counter_ns()
    srv = context(request)
    req = await read_json(request, OllamaEmbedRequest, srv.config.max_body_bytes)
    model = srv.check_model(req.model)
    await srv.check_dimensions(model, req.dimensions)
    keep_alive = srv.keep_alive(req.keep_alive)
    texts = _texts(req.input)
    vectors: FloatArray | list[Any] = []
    if not texts:
        load_seconds, tokens = await load_or_unload(srv, model, keep_alive), 0
    else:
        srv.check_limits(texts)
        result = await srv.embed(model, texts, keep_alive, request, truncate=req.truncate)
        load_seconds, vectors = result.load_seconds, result.vectors
        tokens = sum(result.token_counts)
    return JSONBytes(
        {
            "model": req.model or model.name,
            "embeddings": vectors,
            "total_duration": time.perf_counter_ns() - start,
            "load_duration": int(load_seconds * 1e9),
            "prompt_eval_count": tokens,
        }
    )


@router.post(
    "/api/embeddings",
    response_model=None,
    response_class=JSONBytes,
    responses={200: {"model": OllamaEmbeddingsResponse}, **OLLAMA_EMBED_ERRORS},
    openapi_extra=body_doc(OllamaEmbeddingsRequest),
    summary="Ollama embeddings (legacy)",
)
async def embeddings(request: Request) -> Response:
    srv = context(request)
    req = await read_json(request, OllamaEmbeddingsRequest, srv.config.max_body_bytes)
    model = srv.check_model(req.model)
    keep_alive = srv.keep_alive(req.keep_alive)
    if not req.prompt:
        await load_or_unload(srv, model, keep_alive)
        return JSONBytes({"embedding": []})
    srv.check_limits([req.prompt])
    result = await srv.embed(model, [req.prompt], keep_alive, request)
    return JSONBytes({"embedding": result.vectors[0]})


@router.get(
    "/api/ps",
    response_model=None,
    response_class=JSONBytes,
    responses={200: {"model": PsResponse}, **OLLAMA_AUTH_ERRORS},
    summary="Loaded models (Ollama) and lazyembed's measured memory",
)
async def ps(request: Request) -> Response:
    """Every loaded model with its measured size and expiry; ``lazyembed``: the default
    model's memory report, ``lazyembed_models``: every served model's, by name."""
    srv = context(request)
    running: list[dict[str, Any]] = []
    reports: dict[str, dict[str, Any]] = {}
    for model in srv.models.all():
        memory = await model.memory()
        reports[model.name] = srv.memory_dict(memory)
        if memory.model_loaded:  # a model loading or unloading is not listed
            running.append(await _running(model, memory))
    default = reports[srv.models.default.name]
    return JSONBytes({"models": running, "lazyembed": default, "lazyembed_models": reports})


async def _running(model: ServedModel, memory: MemoryReport) -> dict[str, Any]:
    report = await model.report()
    unload_in = memory.unload_in_s
    expires_at = None
    if unload_in is not None:
        expires_at = rfc3339(datetime.now(timezone.utc) + timedelta(seconds=unload_in))
    return {
        "name": model.name,
        "model": model.name,
        "size": int(memory.model_mb * _MB),
        "digest": str(report.get("weights_sha256") or ""),
        "details": await model.details(),
        "expires_at": expires_at,
        "size_vram": 0,
        "context_length": int(report.get("max_seq_length") or 0),
    }


@router.get(
    "/api/tags",
    response_model=None,
    response_class=JSONBytes,
    responses={200: {"model": TagsResponse}, **OLLAMA_AUTH_ERRORS},
    summary="Models that can be served (Ollama)",
)
async def tags(request: Request) -> Response:
    """The served models, then (``any_model``) the catalogue models present here."""
    served = context(request).models
    listed = [await model.tag() for model in served.all()]
    listed += [found.tag() for found in await served.available()]
    return JSONBytes({"models": listed})


@router.get(
    "/api/version",
    response_model=None,
    response_class=JSONBytes,
    responses=OLLAMA_AUTH_ERRORS,
    summary="Server version (Ollama)",
)
async def version() -> Response:
    return JSONBytes({"version": __version__})


def _texts(value: str | list[str] | None) -> list[str]:
    """Ollama's input: a string, a list, or nothing; "" and [] mean "no text"."""
    if value is None or value == "":
        return []
    return [value] if isinstance(value, str) else value


FAST_ROUTES: dict[str, Handler] = {"/api/embed": embed, "/api/embeddings": embeddings}
