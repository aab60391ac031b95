"""OpenAI's API: ``POST /v1/embeddings`` and ``GET /v1/models``.

The request's ``model`` picks one of the served models (omitted: the default one).
``keep_alive`` is accepted as a lazyembed extension. Token-id input (OpenAI allows lists
of ints) is refused with 422: ids from OpenAI's tokenizer mean nothing to this model.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from lazyembed.server.context import context
from lazyembed.server.docs import OPENAI_AUTH_ERRORS, OPENAI_EMBED_ERRORS, body_doc
from lazyembed.server.errors import ApiError
from lazyembed.server.guard import Handler, read_json
from lazyembed.server.schemas import OpenAIEmbeddingRequest, OpenAIEmbeddingResponse
from lazyembed.server.wire import FloatArray, JSONBytes

router = APIRouter()


@router.post(
    "/v1/embeddings",
    response_model=None,
    response_class=JSONBytes,
    responses={200: {"model": OpenAIEmbeddingResponse}, **OPENAI_EMBED_ERRORS},
    openapi_extra=body_doc(OpenAIEmbeddingRequest),
    summary="OpenAI embeddings",
)
async def embeddings(request: Request) -> Response:
    srv = context(request)
    req = await read_json(request, OpenAIEmbeddingRequest, srv.config.max_body_bytes)
    model = srv.check_model(req.model)
    await srv.check_dimensions(model, req.dimensions)
    keep_alive = srv.keep_alive(req.keep_alive)
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts:
        raise ApiError(422, "input must not be an empty list", "empty_input")
    srv.check_limits(texts)
    result = await srv.embed(model, texts, keep_alive, request)
    tokens = sum(result.token_counts)
    return JSONBytes(
        {
            "object": "list",
            "data": _data(result.vectors, base64_encoded=req.encoding_format == "base64"),
            "model": model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def _data(vectors: FloatArray, *, base64_encoded: bool) -> list[dict[str, Any]]:
    """OpenAI's ``data`` list; base64 is little-endian float32 bytes, as OpenAI sends."""
    if not base64_encoded:
        return [
            {"object": "embedding", "index": i, "embedding": vectors[i]}
            for i in range(len(vectors))
        ]
    little = vectors.astype("<f4", copy=False)
    return [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(little[i].tobytes()).decode("ascii"),
        }
        for i in range(len(vectors))
    ]


@router.get(
    "/v1/models",
    response_model=None,
    response_class=JSONBytes,
    responses=OPENAI_AUTH_ERRORS,
    summary="OpenAI model list",
)
async def models(request: Request) -> Response:
    """What can be served: the served models, then (``any_model``) catalogue models here."""
    served = context(request).models
    names = [model.name for model in served.all()]
    names += [found.entry.hub_id for found in await served.available()]
    return JSONBytes(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "lazyembed"}
                for name in names
            ],
        }
    )


FAST_ROUTES: dict[str, Handler] = {"/v1/embeddings": embeddings}
