"""OpenAI's API: ``POST /v1/embeddings``, ``GET /v1/models`` and ``GET /v1/models/{id}``.

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
from lazyembed.server.docs import (
    OPENAI_AUTH_ERRORS,
    OPENAI_EMBED_ERRORS,
    OPENAI_MODEL_ERRORS,
    body_doc,
)
from lazyembed.server.errors import ApiError, echo
from lazyembed.server.guard import Handler, read_json
from lazyembed.server.schemas import (
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIModel,
    OpenAIModelList,
)
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


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "lazyembed"}


@router.get(
    "/v1/models",
    response_model=None,
    response_class=JSONBytes,
    responses={200: {"model": OpenAIModelList}, **OPENAI_AUTH_ERRORS},
    summary="OpenAI model list",
)
async def models(request: Request) -> Response:
    """What can be served: the served models, then (``any_model``) catalogue models here."""
    served = context(request).models
    names = [model.name for model in served.all()]
    names += [found.entry.hub_id for found in await served.available()]
    return JSONBytes({"object": "list", "data": [_model(name) for name in names]})


@router.get(
    "/v1/models/{model_id:path}",
    response_model=None,
    response_class=JSONBytes,
    responses={200: {"model": OpenAIModel}, **OPENAI_MODEL_ERRORS},
    summary="OpenAI model retrieval",
)
async def retrieve_model(model_id: str, request: Request) -> Response:
    """One model of the list (by its id or an alias; the answer names its id), or 404."""
    served = context(request).models
    for model in served.all():
        if model.answers_to(model_id):
            return JSONBytes(_model(model.name))
    for found in await served.available():
        if model_id.strip() in (found.entry.hub_id, *found.entry.aliases):
            return JSONBytes(_model(found.entry.hub_id))
    raise ApiError(
        404,
        f"model {echo(model_id)} does not exist here; GET /v1/models lists the models",
        "model_not_found",
    )


FAST_ROUTES: dict[str, Handler] = {"/v1/embeddings": embeddings}
