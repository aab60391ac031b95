"""lazyembed's local HTTP server: OpenAI's and Ollama's embedding APIs, dynamic batching.

Needs the ``server`` extra (fastapi, uvicorn, prometheus_client, orjson).
``create_app(embedder, **settings)`` builds the ASGI app; ``lazyembed serve`` runs it
with uvicorn (``http=HalfCloseProtocol``) and calls ``begin_shutdown`` when it drains.
"""

from __future__ import annotations

from lazyembed.errors import InputTooLongError
from lazyembed.server.app import begin_shutdown, create_app
from lazyembed.server.batcher import Batcher, BatcherClosedError, BatchResult, EmbedderLike
from lazyembed.server.context import ServerConfig
from lazyembed.server.errors import ApiError
from lazyembed.server.protocol import HalfCloseProtocol

__all__ = [
    "ApiError",
    "BatchResult",
    "Batcher",
    "BatcherClosedError",
    "EmbedderLike",
    "HalfCloseProtocol",
    "InputTooLongError",
    "ServerConfig",
    "begin_shutdown",
    "create_app",
]
