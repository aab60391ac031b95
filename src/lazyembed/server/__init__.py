"""lazyembed's local HTTP server: OpenAI's and Ollama's embedding APIs, dynamic batching.

Needs the ``server`` extra (fastapi, uvicorn, prometheus_client, orjson).
``create_app(embedder)`` builds the ASGI app; ``lazyembed serve`` runs it with uvicorn.
"""

from __future__ import annotations

from lazyembed.errors import InputTooLongError
from lazyembed.server.app import ServerConfig, create_app
from lazyembed.server.batcher import Batcher, BatchResult, EmbedderLike

__all__ = [
    "BatchResult",
    "Batcher",
    "EmbedderLike",
    "InputTooLongError",
    "ServerConfig",
    "create_app",
]
