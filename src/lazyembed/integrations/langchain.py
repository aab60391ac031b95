"""LangChain: `LazyEmbedEmbeddings`, a ``langchain_core.embeddings.Embeddings``.

Install with ``pip install 'lazyembed[langchain]'``. The model loads at the first embed
and unloads when idle, like any Embedder. The async methods run the model call in a worker
thread (``asyncio.to_thread``), so they never block the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lazyembed.embedder import Embedder
from lazyembed.integrations._common import (
    KeepAlive,
    document_vectors,
    make_embedder,
    missing_extra,
    query_vectors,
)

try:
    from langchain_core.embeddings import Embeddings
except ImportError as exc:  # the extra is not installed
    raise missing_extra("langchain", "langchain", exc) from exc

__all__ = ["LazyEmbedEmbeddings"]


class LazyEmbedEmbeddings(Embeddings):
    """LangChain embeddings computed in-process by a lazily loaded lazyembed model.

    ``LazyEmbedEmbeddings()`` uses the default model and settings (config file and
    ``LAZYEMBED_*`` environment); ``model``, ``idle_timeout`` and any other keyword
    (``variant="int8"``, ``cache_memory_mb=0``, ...) are lazyembed settings. Pass
    ``embedder=`` to share an existing `Embedder` instead. ``keep_alive`` is the per-call
    keep-alive given to every embed (None: the idle timeout decides).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        idle_timeout: float | int | str | None = None,
        keep_alive: KeepAlive = None,
        embedder: Embedder | None = None,
        **settings: Any,
    ) -> None:
        self.embedder, self._owns_embedder = make_embedder(embedder, model, idle_timeout, settings)
        self.keep_alive = keep_alive

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One list of Python floats per text."""
        return document_vectors(self.embedder, texts, self.keep_alive)

    def embed_query(self, text: str) -> list[float]:
        """The query's vector, with the model's query prompt where it has one."""
        return query_vectors(self.embedder, [text], self.keep_alive)[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)

    def close(self) -> None:
        """Close the Embedder if this object created it (a shared one stays open)."""
        if self._owns_embedder:
            self.embedder.close()

    def __enter__(self) -> LazyEmbedEmbeddings:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LazyEmbedEmbeddings(model={self.embedder.model_name!r})"
