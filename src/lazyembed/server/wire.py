"""Bytes on the wire: orjson responses, JSON-safe reports, the non-blocking disconnect probe."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from fastapi.responses import JSONResponse

FloatArray = npt.NDArray[np.float32]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class JSONBytes(JSONResponse):
    """orjson-rendered JSON; serialises NumPy arrays directly (no .tolist())."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(
            content,
            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
            default=str,
        )


def to_jsonable(value: Any) -> Any:
    """Non-finite floats (no JSON for them) → None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


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
