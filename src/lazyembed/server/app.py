"""The FastAPI app: OpenAI's and Ollama's embedding APIs over one lazily loaded model.

Hot path, kept short on purpose: a pure-ASGI guard (API key, Content-Length, metrics) →
the body read with a byte limit → ``model_validate_json`` (strict, one pass in Rust) →
``Batcher.submit`` → orjson straight from the NumPy array. No FastAPI body injection,
no response-model validation, no ``BaseHTTPMiddleware``.

Errors are JSON in the caller's dialect: OpenAI's ``{"error": {"message", "type",
"param", "code"}}`` under ``/v1``, Ollama's ``{"error": "..."}`` elsewhere. Statuses:
malformed JSON 400, ``truncate: false`` with a too-long input 400, missing or wrong key
401, unknown model 404 (naming the model served), too many inputs / too long an input /
too large a body 413, any other invalid request 422, a model that cannot load 503, an
unexpected model error 500. Token-id input (OpenAI allows lists of ints) is refused with
422: ids from OpenAI's tokenizer mean nothing to this model's vocabulary. A client that
disconnects while its request is queued gets nothing (it is gone); the request is counted
with status 499 (nginx's "client closed request") and no error is logged.

Keep-alive: each request may carry ``keep_alive`` (Ollama, and as an extension on
``/v1``); it becomes a lease in the lifecycle, where the longest live lease wins, so a
later request's 0 cannot cut a pin. Ollama's idiom "empty input" loads the model with
the given keep-alive (through the lifecycle, never answered by the embedding cache), and
with ``keep_alive: 0`` unloads it now (an explicit unload, like ``POST /api/unload``).

Shutdown: the lifespan closes the batcher within what is left of ``graceful_timeout``
(counted from ``begin_shutdown``, which ``lazyembed serve`` calls when uvicorn starts
draining). Past it, queued requests fail with 503, a model call still running is not
waited for, the embedder is not closed (that would wait for the call too) and
``app.state.abandoned_work`` is True, so the caller can exit without joining the thread.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from lazyembed import __version__
from lazyembed.errors import (
    ClientDisconnectedError,
    ConfigError,
    InputTooLongError,
    InputTypeError,
    InvalidInputError,
    LazyEmbedError,
    ModelConversionError,
    ModelLoadError,
    ModelNotFoundError,
    WorkerDiedError,
)
from lazyembed.server.batcher import (
    Batcher,
    BatcherClosedError,
    BatchResult,
    EmbedderLike,
    KeepAliveSeconds,
)
from lazyembed.server.metrics import CONTENT_TYPE, ServerMetrics
from lazyembed.server.schemas import (
    HealthResponse,
    OllamaEmbeddingsRequest,
    OllamaEmbeddingsResponse,
    OllamaEmbedRequest,
    OllamaEmbedResponse,
    OllamaError,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIError,
    PsResponse,
    TagsResponse,
    UnloadResponse,
)

log = logging.getLogger("lazyembed.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
M = TypeVar("M", bound=BaseModel)

# Names Ollama and OpenAI users type for all-MiniLM-L6-v2, on top of the resolver's aliases.
SERVER_ALIASES = {
    "all-minilm:22m": "sentence-transformers/all-MiniLM-L6-v2",
    "all-minilm:l6": "sentence-transformers/all-MiniLM-L6-v2",
    "all-minilm-l6-v2:latest": "sentence-transformers/all-MiniLM-L6-v2",
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
}
OPEN_PATHS = frozenset({"/healthz"})  # answered without the API key


@dataclass(frozen=True)
class ServerConfig:
    """The server's limits and batching knobs (read from the embedder's Settings)."""

    api_key: str | None = None
    max_inputs_per_request: int = 2048
    max_chars_per_input: int = 100_000
    max_body_bytes: int = 16 * 1024 * 1024
    batch_wait_ms: float = 2.0
    batch_max_size: int = 64
    batch_max_tokens: int = 16384
    # Seconds the ASGI server gives requests to finish at shutdown; the batcher waits no
    # longer than what is left of it (None: wait for everything).
    graceful_timeout: float | None = None

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ServerConfig:
        """Take each field from ``settings`` when it has it, then apply overrides."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = getattr(settings, f.name, None)
            if value is not None:
                values[f.name] = value
        config = cls(**values)
        return replace(config, **overrides) if overrides else config


class JSONBytes(JSONResponse):
    """orjson-rendered JSON; serialises NumPy arrays directly (no .tolist())."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(
            content,
            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
            default=_json_default,
        )


def _json_default(value: Any) -> Any:
    if isinstance(value, float):  # pragma: no cover - orjson handles floats itself
        return None
    return str(value)


class ApiError(Exception):
    """An error answered as JSON in the dialect of the endpoint (see ``error_response``)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.kind = kind
        self.headers = headers


def error_body(path: str, error: ApiError) -> dict[str, Any]:
    if path == "/v1" or path.startswith("/v1/"):
        return {
            "error": {
                "message": error.message,
                "type": error.kind,
                "param": None,
                "code": error.code,
            }
        }
    return {"error": error.message}


def error_response(path: str, error: ApiError) -> Response:
    return JSONBytes(error_body(path, error), status_code=error.status, headers=error.headers)


# ---- the guard: API key, early Content-Length check, per-request metrics -----------------


Handler = Callable[[Request], Awaitable[Response]]


class GuardMiddleware:
    """Pure ASGI (cheap): refuse before routing what must be refused, and time everything.

    The embedding endpoints (``fast_routes``, POST only) are called from here directly:
    they take a bare ``Request`` and answer every error themselves, so FastAPI's routing,
    dependency solving and exception middleware would only add cost (10-15 % of the
    server's own CPU per request, measured). They stay registered with FastAPI too, for
    the OpenAPI schema.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        max_body_bytes: int,
        metrics: ServerMetrics,
        endpoints: frozenset[str],
        fast_routes: dict[str, Handler] | None = None,
    ) -> None:
        self.app = app
        self.expected = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.endpoints = endpoints
        self.fast_routes = fast_routes or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path: str = scope["path"]
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await error_response(path, refusal)(scope, receive, send_status)
            elif scope["method"] == "POST" and (handler := self.fast_routes.get(path)):
                await self._call(handler, scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        except ClientDisconnectedError:
            status = 499  # nginx's "client closed request"; nobody to answer, nothing to log
        finally:
            endpoint = path if path in self.endpoints else "other"
            self.metrics.observe_request(endpoint, status, time.perf_counter() - start)

    @staticmethod
    async def _call(handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await handler(Request(scope, receive))
        except ApiError as exc:
            response = error_response(scope["path"], exc)
        except ClientDisconnectedError:
            raise  # the caller records 499 and sends nothing
        except Exception as exc:
            log.exception("unexpected error in %s", scope["path"])
            error = ApiError(
                500, f"internal error: {type(exc).__name__}", "internal_error", "server_error"
            )
            response = error_response(scope["path"], error)
        await response(scope, receive, send)

    def _refusal(self, scope: Scope, path: str) -> ApiError | None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if self.expected is not None and path not in OPEN_PATHS:
            authorization = next((v for k, v in headers if k == b"authorization"), b"")
            scheme, _, token = authorization.partition(b" ")
            # compare_digest: the time taken does not reveal how much of the key matched.
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.expected):
                return ApiError(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    "invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length = next((v for k, v in headers if k == b"content-length"), None)
        if length is not None:
            try:
                too_large = int(length) > self.max_body_bytes
            except ValueError:
                return ApiError(400, "invalid Content-Length header", "invalid_request")
            if too_large:
                return _body_too_large(self.max_body_bytes)
        return None


def _body_too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body larger than {limit} bytes", "body_too_large")


# ---- the app ----------------------------------------------------------------------------


class _Server:
    """What the endpoints share: the embedder, the batcher, metrics, cached model facts."""

    def __init__(self, embedder: EmbedderLike, config: ServerConfig) -> None:
        self.embedder = embedder
        self.config = config
        self.metrics = ServerMetrics(embedder)
        self.batcher = Batcher(
            embedder,
            max_size=config.batch_max_size,
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

    # model names

    def check_model(self, requested: str | None) -> str:
        """The served model's name, or 404 naming what is served."""
        if requested is None or not requested.strip() or requested == self.served:
            return self.served
        key = requested.strip().lower()
        if SERVER_ALIASES.get(key) == self.served or _canonical(requested) == self.served:
            return self.served
        if key == self.served.rsplit("/", 1)[-1].lower():
            return self.served
        raise ApiError(
            404,
            f"model {requested!r} is not served here; this server serves {self.served!r} "
            f"(aliases: {', '.join(self.aliases())})",
            "model_not_found",
        )

    def aliases(self) -> list[str]:
        from lazyembed.models import resolve

        table = {**getattr(resolve, "_ALIASES", {}), **SERVER_ALIASES}
        own = self.served.lower()
        return sorted(
            name
            for name, target in table.items()
            if target == self.served and name not in (self.served, own)
        )

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

    # requests

    async def parse(self, request: Request, model: type[M]) -> M:
        body = await read_body(request, self.config.max_body_bytes)
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            if any(e["type"] == "json_invalid" for e in errors):
                raise ApiError(
                    400, f"malformed JSON body: {errors[0]['msg']}", "invalid_json"
                ) from None
            raise ApiError(422, describe_errors(errors), "invalid_request") from None

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

    async def embed(
        self,
        texts: list[str],
        keep_alive: KeepAliveSeconds,
        request: Request,
        *,
        truncate: bool = True,
    ) -> BatchResult:
        try:
            return await self.batcher.submit(
                texts,
                keep_alive=keep_alive,
                truncate=truncate,
                is_disconnected=partial(poll_disconnected, request.receive),
            )
        except ClientDisconnectedError:
            raise  # not an error: the guard records 499 and answers nobody
        except Exception as exc:
            raise model_error(exc) from None

    async def warmup(self, keep_alive: KeepAliveSeconds) -> float:
        """Load the model with this keep-alive (never from the cache); load seconds."""
        try:
            return await self.batcher.warmup(keep_alive)
        except Exception as exc:
            raise model_error(exc) from None

    def graceful_remaining(self) -> float | None:
        """Seconds of the graceful timeout left (all of it if nobody said when it began)."""
        timeout = self.config.graceful_timeout
        if timeout is None:
            return None
        if self.shutdown_began is None:
            return float(timeout)
        return max(0.0, timeout - (time.monotonic() - self.shutdown_began))

    async def unload(self) -> bool:
        return await asyncio.to_thread(self.embedder.unload_model)

    async def memory(self) -> dict[str, Any]:
        report: dict[str, Any] = to_jsonable(
            await asyncio.to_thread(self.embedder.get_memory_usage)
        )
        return report

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


def model_error(exc: Exception) -> ApiError:
    """What a failed model call (or load) answers: 400, 422, 503 or 500 (logged)."""
    if isinstance(exc, InputTooLongError):
        return ApiError(400, str(exc), "context_length_exceeded")
    if isinstance(exc, (InputTypeError, InvalidInputError)):
        return ApiError(422, str(exc), "invalid_input")
    if isinstance(
        exc,
        (
            ModelLoadError,
            ModelNotFoundError,
            ModelConversionError,
            WorkerDiedError,
            BatcherClosedError,
        ),
    ):
        return ApiError(503, f"model unavailable: {exc}", "model_unavailable", "server_error")
    log.error("embedding failed", exc_info=exc)
    return ApiError(
        500, f"embedding failed: {type(exc).__name__}: {exc}", "model_error", "server_error"
    )


def begin_shutdown(app: FastAPI) -> None:
    """The ASGI server stopped accepting requests: start the graceful-timeout clock.

    ``lazyembed serve`` calls this when uvicorn begins its graceful shutdown, so the
    lifespan's wait for the batcher ends when the graceful timeout does; without the
    call, the lifespan allows the whole ``graceful_timeout`` from its own start.
    """
    srv: _Server = app.state.server
    if srv.shutdown_began is None:
        srv.shutdown_began = time.monotonic()


def _canonical(name: str) -> str:
    from lazyembed.models.resolve import canonical_spec

    return canonical_spec(name)


async def poll_disconnected(receive: Receive) -> bool:
    """Has the client gone? Looks without waiting and without a task or cancel scope.

    Starts ``receive()`` and, if it would have to wait (nothing arrived: the client is
    still there), closes it again. Starlette's ``Request.is_disconnected`` does the same
    with an anyio cancel scope, whose cancellation is aimed at the *calling* task — here
    the batcher's collector, which must never be cancelled by a probe.
    """
    probe = receive().__await__()
    try:
        probe.send(None)
    except StopIteration as done:
        message = done.value
        return isinstance(message, MutableMapping) and message.get("type") == "http.disconnect"
    except Exception:
        return False
    probe.close()  # it was about to wait for the client: still connected
    return False


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (chunked bodies too)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _body_too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client disconnected while sending the body", "disconnected") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def describe_errors(errors: list[Any]) -> str:
    """Pydantic's errors as one line without echoing the input back."""
    parts = []
    for error in errors[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()) if not isinstance(p, int)) or (
            "body"
        )
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{location}: {message}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def parse_keep_alive(value: float | str | None) -> KeepAliveSeconds:
    """Ollama's keep_alive ("5m", "1h", "-1", 0, 300) → seconds; pins become -1.0.

    ``""`` counts as not given (some clients send the empty default)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    from lazyembed.config import parse_duration

    try:
        seconds = parse_duration(value, key="keep_alive", source="request")
    except (ConfigError, ValueError, TypeError) as exc:
        raise ApiError(422, f"invalid keep_alive {value!r}: {exc}", "invalid_keep_alive") from None
    if seconds is None or seconds < 0 or math.isinf(seconds):
        return -1.0
    return float(seconds)


def to_jsonable(value: Any) -> Any:
    """Non-finite floats (no JSON for them) → None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _texts(value: str | list[str] | None) -> list[str]:
    """Ollama's input: a string, a list, or nothing; "" and [] mean "no text"."""
    if value is None or value == "":
        return []
    return [value] if isinstance(value, str) else value


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _errors_doc(model: type[BaseModel], *statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "Malformed JSON (or an input too long with truncate: false)",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Too many inputs, an input too long, or a body too large",
        422: "Invalid request",
        500: "Unexpected model error",
        503: "Model unavailable",
    }
    return {s: {"model": model, "description": descriptions[s]} for s in statuses}


def create_app(
    embedder: EmbedderLike | None = None,
    *,
    config: ServerConfig | None = None,
    close_embedder: bool | None = None,
    **overrides: Any,
) -> FastAPI:
    """Build the app around ``embedder`` (a default ``lazyembed.Embedder`` when None).

    ``config`` defaults to ``ServerConfig.from_settings(embedder.settings, **overrides)``.
    ``close_embedder`` (default: only when the app created it) closes it at shutdown.
    """
    owned = embedder is None
    if embedder is None:
        from lazyembed.embedder import Embedder

        embedder = Embedder()
    if config is None:
        config = ServerConfig.from_settings(getattr(embedder, "settings", None), **overrides)
    srv = _Server(embedder, config)
    should_close = owned if close_embedder is None else close_embedder

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        srv.batcher.reopen()  # no-op unless this app was started and stopped before
        srv.shutdown_began = None
        app.state.abandoned_work = False
        yield
        # uvicorn runs this after in-flight requests finished (graceful shutdown), or
        # after it cancelled them at its graceful timeout: then no time is left, and a
        # model call still running is answered to nobody, so it is not waited for.
        finished = await srv.batcher.aclose(timeout=srv.graceful_remaining())
        app.state.abandoned_work = not finished
        closer = getattr(srv.embedder, "close", None)
        if should_close and callable(closer) and finished:
            # (not after abandoning a call: closing would wait for it to finish)
            await asyncio.to_thread(closer)

    app = FastAPI(
        title="lazyembed",
        version=__version__,
        description="Local sentence embeddings speaking the OpenAI and Ollama APIs.",
        lifespan=lifespan,
    )
    app.state.server = srv

    openai_errors = _errors_doc(OpenAIError, 400, 401, 404, 413, 422, 500, 503)
    ollama_errors = _errors_doc(OllamaError, 400, 401, 404, 413, 422, 500, 503)

    @app.post(
        "/v1/embeddings",
        response_model=None,
        response_class=JSONBytes,
        responses={200: {"model": OpenAIEmbeddingResponse}, **openai_errors},
        openapi_extra=_body_doc(OpenAIEmbeddingRequest),
        summary="OpenAI embeddings",
    )
    async def openai_embeddings(request: Request) -> Response:
        req = await srv.parse(request, OpenAIEmbeddingRequest)
        name = srv.check_model(req.model)
        await srv.check_dimensions(req.dimensions)
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts:
            raise ApiError(422, "input must not be an empty list", "empty_input")
        srv.check_limits(texts)
        result = await srv.embed(texts, parse_keep_alive(req.keep_alive), request)
        vectors = result.vectors
        if req.encoding_format == "base64":
            little = vectors.astype("<f4", copy=False)
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": base64.b64encode(little[i].tobytes()).decode("ascii"),
                }
                for i in range(len(texts))
            ]
        else:
            data = [
                {"object": "embedding", "index": i, "embedding": vectors[i]}
                for i in range(len(texts))
            ]
        tokens = sum(result.token_counts)
        srv.metrics.tokens.inc(tokens)
        return JSONBytes(
            {
                "object": "list",
                "data": data,
                "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @app.get(
        "/v1/models",
        response_model=None,
        response_class=JSONBytes,
        responses=_errors_doc(OpenAIError, 401),
        summary="OpenAI model list",
    )
    async def openai_models() -> Response:
        return JSONBytes(
            {
                "object": "list",
                "data": [
                    {"id": srv.served, "object": "model", "created": 0, "owned_by": "lazyembed"}
                ],
            }
        )

    async def ollama_load_or_unload(keep_alive: KeepAliveSeconds) -> float:
        """Ollama's idiom for an empty input: keep_alive 0 unloads, anything else loads.

        Loads through the lifecycle with the request's lease (``warmup``), not by
        embedding "": that is answered from the cache once seen, loading nothing.
        """
        if keep_alive == 0:
            await srv.unload()
            return 0.0
        return await srv.warmup(keep_alive)

    @app.post(
        "/api/embed",
        response_model=None,
        response_class=JSONBytes,
        responses={200: {"model": OllamaEmbedResponse}, **ollama_errors},
        openapi_extra=_body_doc(OllamaEmbedRequest),
        summary="Ollama embed",
    )
    async def ollama_embed(request: Request) -> Response:
        start = time.perf_counter_ns()
        req = await srv.parse(request, OllamaEmbedRequest)
        name = srv.check_model(req.model)
        await srv.check_dimensions(req.dimensions)
        keep_alive = parse_keep_alive(req.keep_alive)
        texts = _texts(req.input)
        if not texts:
            load_seconds = await ollama_load_or_unload(keep_alive)
            return JSONBytes(
                {
                    "model": req.model or name,
                    "embeddings": [],
                    "total_duration": time.perf_counter_ns() - start,
                    "load_duration": int(load_seconds * 1e9),
                    "prompt_eval_count": 0,
                }
            )
        srv.check_limits(texts)
        result = await srv.embed(texts, keep_alive, request, truncate=req.truncate)
        tokens = sum(result.token_counts)
        srv.metrics.tokens.inc(tokens)
        return JSONBytes(
            {
                "model": req.model or name,
                "embeddings": result.vectors,
                "total_duration": time.perf_counter_ns() - start,
                "load_duration": int(result.load_seconds * 1e9),
                "prompt_eval_count": tokens,
            }
        )

    @app.post(
        "/api/embeddings",
        response_model=None,
        response_class=JSONBytes,
        responses={200: {"model": OllamaEmbeddingsResponse}, **ollama_errors},
        openapi_extra=_body_doc(OllamaEmbeddingsRequest),
        summary="Ollama embeddings (legacy)",
    )
    async def ollama_embeddings(request: Request) -> Response:
        req = await srv.parse(request, OllamaEmbeddingsRequest)
        srv.check_model(req.model)
        keep_alive = parse_keep_alive(req.keep_alive)
        if not req.prompt:
            await ollama_load_or_unload(keep_alive)
            return JSONBytes({"embedding": []})
        srv.check_limits([req.prompt])
        result = await srv.embed([req.prompt], keep_alive, request)
        srv.metrics.tokens.inc(sum(result.token_counts))
        return JSONBytes({"embedding": result.vectors[0]})

    @app.get(
        "/api/ps",
        response_model=None,
        response_class=JSONBytes,
        responses={200: {"model": PsResponse}, **_errors_doc(OllamaError, 401)},
        summary="Loaded models (Ollama) and lazyembed's measured memory",
    )
    async def ollama_ps() -> Response:
        memory = await srv.memory()
        models: list[dict[str, Any]] = []
        if memory.get("model_loaded"):
            report = await srv.report()
            unload_in = memory.get("unload_in_s")
            expires_at = (
                _rfc3339(datetime.now(timezone.utc) + timedelta(seconds=float(unload_in)))
                if isinstance(unload_in, (int, float))
                else None
            )
            models.append(
                {
                    "name": srv.served,
                    "model": srv.served,
                    "size": int(float(memory.get("model_mb") or 0) * 1024 * 1024),
                    "digest": str(report.get("weights_sha256") or ""),
                    "details": await srv.details(),
                    "expires_at": expires_at,
                    "size_vram": 0,
                    "context_length": int(report.get("max_seq_length") or 0),
                }
            )
        return JSONBytes({"models": models, "lazyembed": memory})

    @app.get(
        "/api/tags",
        response_model=None,
        response_class=JSONBytes,
        responses={200: {"model": TagsResponse}, **_errors_doc(OllamaError, 401)},
        summary="Models served (Ollama)",
    )
    async def ollama_tags() -> Response:
        report = await srv.report()
        onnx_mb = report.get("onnx_mb")
        modified = datetime.now(timezone.utc)
        onnx_path = report.get("onnx_path")
        if onnx_path:
            try:
                from pathlib import Path

                mtime = Path(onnx_path).stat().st_mtime
                modified = datetime.fromtimestamp(mtime, timezone.utc)
            except OSError:
                pass
        return JSONBytes(
            {
                "models": [
                    {
                        "name": srv.served,
                        "model": srv.served,
                        "modified_at": _rfc3339(modified),
                        "size": int(float(onnx_mb or 0) * 1024 * 1024),
                        "digest": str(report.get("weights_sha256") or ""),
                        "details": await srv.details(),
                    }
                ]
            }
        )

    @app.get(
        "/api/version",
        response_model=None,
        response_class=JSONBytes,
        responses=_errors_doc(OllamaError, 401),
        summary="Server version (Ollama)",
    )
    async def ollama_version() -> Response:
        return JSONBytes({"version": __version__})

    @app.post(
        "/api/unload",
        response_model=None,
        response_class=JSONBytes,
        responses={200: {"model": UnloadResponse}, **_errors_doc(OllamaError, 401)},
        summary="Unload the model now (waits for calls in flight)",
    )
    async def unload() -> Response:
        unloaded = await srv.unload()
        return JSONBytes({"unloaded": unloaded, "memory": await srv.memory()})

    @app.get(
        "/healthz",
        response_model=None,
        response_class=JSONBytes,
        responses={200: {"model": HealthResponse}},
        summary="Liveness (never needs the API key)",
    )
    async def healthz() -> Response:
        return JSONBytes({"status": "ok", "model_loaded": bool(srv.embedder.is_loaded)})

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses=_errors_doc(OllamaError, 401),
        summary="Prometheus metrics",
    )
    async def metrics() -> Response:
        body = await asyncio.to_thread(srv.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    @app.get("/", response_class=PlainTextResponse, summary="Ollama's liveness probe")
    async def root() -> Response:
        return PlainTextResponse("lazyembed is running")

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> Response:
        return error_response(request.url.path, exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        error = ApiError(exc.status_code, str(exc.detail), code, headers=headers)
        return error_response(request.url.path, error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        error = ApiError(422, describe_errors(list(exc.errors())), "invalid_request")
        return error_response(request.url.path, error)

    @app.exception_handler(LazyEmbedError)
    async def on_lazyembed_error(request: Request, exc: LazyEmbedError) -> Response:
        error = ApiError(500, f"{type(exc).__name__}: {exc}", "internal_error", "server_error")
        return error_response(request.url.path, error)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus the request models we parse ourselves (for schemathesis)."""
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (OpenAIEmbeddingRequest, OllamaEmbedRequest, OllamaEmbeddingsRequest):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        if config.api_key:
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    endpoints = frozenset(
        path for route in app.routes if isinstance(path := getattr(route, "path", None), str)
    )
    app.add_middleware(
        GuardMiddleware,
        api_key=config.api_key,
        max_body_bytes=config.max_body_bytes,
        metrics=srv.metrics,
        endpoints=endpoints,
        fast_routes={
            "/v1/embeddings": openai_embeddings,
            "/api/embed": ollama_embed,
            "/api/embeddings": ollama_embeddings,
        },
    )
    return app
