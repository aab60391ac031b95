"""The guard: API key, early Content-Length check, per-request metrics, last-resort errors.

Pure ASGI (cheap): it refuses before routing what must be refused, and times everything.
The embedding endpoints (``fast_routes``, POST only) are called from here directly: they
take a bare ``Request`` and raise errors that `errors.error_response` answers, so
FastAPI's routing, dependency solving and exception middleware would only add cost.
They stay registered with FastAPI too, for the OpenAPI schema.

A client that went away gets nothing (status 499, nginx's "client closed request",
nothing logged); any other exception escaping a handler is answered from the error table
if the response has not started.

A request's body must arrive within ``body_timeout`` seconds of the request's start:
the guard gives the app a ``receive`` that waits no longer, then answers 408 and closes
the connection, so a stalled or trickling upload cannot hold a connection (or a
graceful shutdown) for long.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from lazyembed.errors import ClientDisconnectedError
from lazyembed.server.errors import ApiError, describe_errors, echo, error_response
from lazyembed.server.metrics import ServerMetrics
from lazyembed.server.wire import ASGIApp, Message, Receive, Scope, Send

Handler = Callable[[Request], Awaitable[Response]]

OPEN_PATHS = frozenset({"/", "/healthz"})  # liveness probes: answered without the API key
DISCONNECTED = 499


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body larger than {limit} bytes", "body_too_large")


def body_timed_out(seconds: float) -> ApiError:
    """408, closing the connection (the rest of the body may still arrive)."""
    return ApiError(
        408,
        f"request body not received within {seconds:g} s (setting server_body_timeout)",
        "body_timeout",
        headers={"Connection": "close"},
    )


async def _within(pending: Awaitable[Message], seconds: float) -> Message:
    """``await pending``, or TimeoutError after ``seconds``: a timer on this task from
    Python 3.11 (``asyncio.timeout``), a task per wait before (``wait_for``)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await pending
    return await asyncio.wait_for(pending, seconds)  # pragma: no cover - Python 3.10


def body_deadline(receive: Receive, seconds: float) -> Receive:
    """``receive`` that raises `body_timed_out` if the body is not complete ``seconds``
    from now; once it is, a plain pass-through (the disconnect probe relies on that)."""
    deadline = time.monotonic() + seconds
    complete = False

    async def receive_body() -> Message:
        nonlocal complete
        if complete:
            return await receive()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise body_timed_out(seconds)
        try:
            message = await _within(receive(), remaining)
        except asyncio.TimeoutError:  # (TimeoutError itself from Python 3.11)
            raise body_timed_out(seconds) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            complete = True
        return message

    return receive_body


class GuardMiddleware:
    """See the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        max_body_bytes: int,
        body_timeout: float,
        metrics: ServerMetrics,
        endpoints: frozenset[str],
        fast_routes: dict[str, Handler] | None = None,
    ) -> None:
        self.app = app
        # Compared as the client's token is: without surrounding whitespace.
        self.expected = api_key.strip().encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.metrics = metrics
        self.endpoints = endpoints
        self.fast_routes = fast_routes or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        receive = body_deadline(receive, self.body_timeout)
        path: str = scope["path"]
        status = 0  # 0: no response started

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
                response = await handler(Request(scope, receive))
                await response(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        except ClientDisconnectedError:
            status = DISCONNECTED  # nobody to answer, nothing to log
            hang_up = (scope.get("extensions") or {}).get("lazyembed.hang_up")
            if callable(hang_up):  # a half-closed connection (protocol.py): close it
                hang_up()
        except Exception as exc:
            if status:
                raise  # the response has started: nothing else can be sent
            await error_response(path, exc)(scope, receive, send_status)
        finally:
            endpoint = path if path in self.endpoints else "other"
            self.metrics.observe_request(endpoint, status or 500, time.perf_counter() - start)

    def _refusal(self, scope: Scope, path: str) -> ApiError | None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if self.expected is not None and path not in OPEN_PATHS:
            authorization = next((v for k, v in headers if k == b"authorization"), b"")
            scheme, _, token = authorization.strip().partition(b" ")
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
                return body_too_large(self.max_body_bytes)
        return None


M = TypeVar("M", bound=BaseModel)


_ENCODINGS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": 0}


def _content_encoding(request: Request) -> str | None:
    """The body's Content-Encoding, if it needs decoding; 415 for one we cannot decode."""
    coding = request.headers.get("content-encoding", "").strip().lower()
    if coding in ("", "identity"):
        return None
    if coding not in _ENCODINGS:
        raise ApiError(
            415,
            f"Content-Encoding {echo(coding)} is not supported; send the body as is, "
            "or gzip or deflate",
            "unsupported_encoding",
        )
    return coding


def decode_body(body: bytes, coding: str, limit: int) -> bytes:
    """A gzip or deflate body decoded, refused with 413 once the decoded size passes
    ``limit`` (a small bomb cannot expand beyond it) and 400 if the data is broken."""
    # deflate: zlib-wrapped as HTTP says, or raw as some clients send it.
    wbits = _ENCODINGS[coding] or (zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS)
    decoder = zlib.decompressobj(wbits)
    try:
        data = decoder.decompress(body, limit + 1)
        complete = decoder.eof
    except zlib.error as exc:
        raise ApiError(
            400, f"body is not valid {coding} data ({exc})", "invalid_encoding"
        ) from None
    if len(data) > limit:
        raise ApiError(
            413, f"request body larger than {limit} bytes once decoded", "body_too_large"
        )
    if not complete:
        raise ApiError(400, f"{coding} body is cut short", "invalid_encoding")
    return data


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (chunked bodies too);
    decoded if its Content-Encoding is gzip or deflate (the decoded size bounded too)."""
    coding = _content_encoding(request)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:  # nobody to answer: the guard drops the connection (499)
        raise ClientDisconnectedError("client disconnected while sending the body") from None
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return body if coding is None else decode_body(body, coding, limit)


async def read_json(request: Request, model: type[M], limit: int) -> M:
    """The body parsed into ``model`` (strict, one pass): 400 if not JSON, 422 if invalid."""
    return parse_json(await read_body(request, limit), model)


def parse_json(body: bytes, model: type[M]) -> M:
    """``body`` parsed into ``model``: 400 if not JSON, 422 if invalid (a lone surrogate
    escape such as ``"\\ud800"`` is valid JSON but no text: 422 naming where it is)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(error["type"] == "json_invalid" for error in errors):
            _refuse_lone_surrogates(body)
            message = f"malformed JSON body: {errors[0]['msg']}"
            raise ApiError(400, message, "invalid_json") from None
        raise ApiError(422, describe_errors(list(errors)), "invalid_request") from None


def _refuse_lone_surrogates(body: bytes) -> None:
    """422 naming the first string with a lone surrogate, if that is why ``body`` (JSON
    to Python's parser, which keeps such escapes) was refused; else nothing."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return  # really malformed
    found = _lone_surrogate(value, "")
    if found is not None:
        where, position = found
        raise ApiError(
            422,
            f"{where} is not valid Unicode text (lone surrogate at character {position}); "
            "fix its encoding",
            "invalid_input",
        )


def _lone_surrogate(value: object, where: str) -> tuple[str, int] | None:
    """(where, character) of the first lone surrogate in ``value``: inputs are named as
    the library names them (``input 0``), other fields by their key."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return where or "body", exc.start
        return None
    if isinstance(value, list):
        for position, item in enumerate(value):
            inner = f"input {position}" if where == "input" else f"{where or 'body'}[{position}]"
            found = _lone_surrogate(item, inner)
            if found is not None:
                return found
    if isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate(key, "a key") or _lone_surrogate(
                item, "input 0" if key == "input" and isinstance(item, str) else str(key)
            )
            if found is not None:
                return found
    return None
