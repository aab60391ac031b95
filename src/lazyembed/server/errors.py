"""Errors as HTTP answers: one table from exception class to status and code.

Every path that turns an exception into a response (the guard, the embedding handlers,
FastAPI's exception handlers) calls `error_response`. The dialect follows the path:
OpenAI's ``{"error": {"message", "type", "param", "code"}}`` under ``/v1``, Ollama's
``{"error": "..."}`` elsewhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from lazyembed.errors import (
    BackendUnavailableError,
    ClientDisconnectedError,
    ClosedError,
    InputTooLongError,
    InputTypeError,
    InvalidInputError,
    LazyEmbedError,
    ModelBusyError,
    ModelConversionError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedModelError,
    WorkerDiedError,
)
from lazyembed.server.wire import JSONBytes

log = logging.getLogger("lazyembed.server")

MAX_ECHO_CHARS = 100  # how much of a client's value an error message repeats


class ApiError(LazyEmbedError):
    """An error answered as JSON in the dialect of the endpoint (see `error_response`)."""

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


@dataclass(frozen=True)
class Answer:
    """How one class of exception is answered."""

    status: int
    code: str
    kind: str = "invalid_request_error"
    prefix: str = ""  # put before the exception's message
    logged: bool = False  # a server-side failure: logged with its traceback


_UNAVAILABLE = Answer(503, "model_unavailable", "server_error", "model unavailable: ")

#: Exception class → answer; the first class in an exception's MRO that is listed wins.
ERROR_TABLE: dict[type[BaseException], Answer] = {
    InputTooLongError: Answer(400, "context_length_exceeded"),
    InputTypeError: Answer(422, "invalid_input"),
    InvalidInputError: Answer(422, "invalid_input"),
    ModelLoadError: _UNAVAILABLE,
    ModelNotFoundError: _UNAVAILABLE,
    ModelConversionError: _UNAVAILABLE,
    UnsupportedModelError: _UNAVAILABLE,
    BackendUnavailableError: _UNAVAILABLE,
    ModelBusyError: _UNAVAILABLE,
    WorkerDiedError: _UNAVAILABLE,
    ClosedError: _UNAVAILABLE,  # the batcher or embedder is shutting down
    RequestValidationError: Answer(422, "invalid_request"),
    Exception: Answer(500, "internal_error", "server_error", "internal error: ", logged=True),
}

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def echo(value: str) -> str:
    """A client's value, quoted and cut short enough to repeat in a message."""
    if len(value) <= MAX_ECHO_CHARS:
        return repr(value)
    return repr(value[:MAX_ECHO_CHARS]) + "…"


def api_error(exc: BaseException) -> ApiError:
    """The answer to ``exc`` by the table (an `ApiError` answers itself)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, StarletteHTTPException):
        headers = dict(exc.headers) if exc.headers else None
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return ApiError(exc.status_code, str(exc.detail), code, headers=headers)
    answer = next(
        (ERROR_TABLE[cls] for cls in type(exc).__mro__ if cls in ERROR_TABLE),
        ERROR_TABLE[Exception],
    )
    if isinstance(exc, RequestValidationError):
        message = describe_errors(list(exc.errors()))
    elif answer.logged:
        log.error("request failed", exc_info=exc)
        message = f"{answer.prefix}{type(exc).__name__}: {exc}"
    else:
        message = f"{answer.prefix}{exc}"
    return ApiError(answer.status, message, answer.code, answer.kind)


def describe_errors(errors: list[Any]) -> str:
    """Pydantic's errors as one line without echoing the input back."""
    parts = []
    for error in errors[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()) if not isinstance(p, int))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{location or 'body'}: {message}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def error_body(path: str, error: ApiError) -> dict[str, Any]:
    if is_openai_path(path):
        body = {"message": error.message, "type": error.kind, "param": None, "code": error.code}
        return {"error": body}
    return {"error": error.message}


def error_response(path: str, exc: BaseException) -> Response:
    """The JSON answer to ``exc`` for a request to ``path``."""
    error = api_error(exc)
    return JSONBytes(error_body(path, error), status_code=error.status, headers=error.headers)


async def _handle(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ClientDisconnectedError):
        raise exc  # nobody to answer: the guard drops the connection (499)
    return error_response(request.url.path, exc)


def install_error_handlers(app: FastAPI) -> None:
    """Route FastAPI's own errors (routing, validation, lazyembed's) to the table; the
    guard answers whatever else escapes a handler."""
    for cls in (ApiError, StarletteHTTPException, RequestValidationError, LazyEmbedError):
        app.add_exception_handler(cls, _handle)
