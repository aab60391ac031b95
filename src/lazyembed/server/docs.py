"""OpenAPI documentation of the routes: error responses, request bodies we parse ourselves."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from lazyembed.server.schemas import (
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaError,
    OpenAIEmbeddingRequest,
    OpenAIError,
    UnloadRequest,
)

_DESCRIPTIONS = {
    400: "Malformed JSON (or an input too long with truncate: false)",
    401: "Missing or wrong API key",
    404: "Unknown model",
    408: "The body did not arrive within server_body_timeout",
    413: "Too many inputs, an input too long, or a body too large",
    415: "A Content-Encoding other than gzip or deflate",
    422: "Invalid request",
    500: "Unexpected model error",
    503: "Model unavailable",
}
_EMBED_STATUSES = (400, 401, 404, 408, 413, 415, 422, 500, 503)


def body_doc(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    content = {"application/json": {"schema": ref}}
    return {"requestBody": {"required": required, "content": content}}


def errors_doc(model: type[BaseModel], *statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": model, "description": _DESCRIPTIONS[s]} for s in statuses}


OPENAI_EMBED_ERRORS = errors_doc(OpenAIError, *_EMBED_STATUSES)
OLLAMA_EMBED_ERRORS = errors_doc(OllamaError, *_EMBED_STATUSES)
OPENAI_AUTH_ERRORS = errors_doc(OpenAIError, 401)
OPENAI_MODEL_ERRORS = errors_doc(OpenAIError, 401, 404)
OLLAMA_AUTH_ERRORS = errors_doc(OllamaError, 401)


def install_openapi(app: FastAPI, *, secured: bool) -> None:
    """FastAPI's schema plus the request models we parse ourselves (for schemathesis)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        requests = (OpenAIEmbeddingRequest, OllamaEmbedRequest, OllamaEmbeddingsRequest)
        for model in (*requests, UnloadRequest):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        if secured:
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
