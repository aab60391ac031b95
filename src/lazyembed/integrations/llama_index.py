"""LlamaIndex: `LazyEmbedEmbedding`, a ``BaseEmbedding`` usable as ``Settings.embed_model``.

Install with ``pip install 'lazyembed[llama-index]'``. The model loads at the first embed
and unloads when idle, like any Embedder. It is a pydantic model: the settings are
fields, the Embedder itself is a private attribute. The async methods run the model call
in a worker thread, so they never block the event loop.
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
    from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
except ImportError as exc:  # the extra is not installed
    raise missing_extra("llama_index", "llama-index", exc) from exc

__all__ = ["LazyEmbedEmbedding"]


class LazyEmbedEmbedding(BaseEmbedding):
    """LlamaIndex embeddings computed in-process by a lazily loaded lazyembed model.

    ``LazyEmbedEmbedding()`` uses the default model and settings; ``model`` (or
    LlamaIndex's ``model_name``), ``idle_timeout`` and any keyword that is not a
    ``BaseEmbedding`` field (``variant="int8"``, ``cache_memory_mb=0``, ...) are lazyembed
    settings. Pass ``embedder=`` to share an existing `Embedder` instead.
    """

    idle_timeout: float | int | str | None = Field(
        default=None, description="lazyembed idle timeout (None: from the settings)."
    )
    keep_alive: KeepAlive = Field(
        default=None, description="Per-call keep-alive (None: the idle timeout decides)."
    )
    lazyembed_settings: dict[str, Any] = Field(
        default_factory=dict, description="Further lazyembed settings.", exclude=True
    )

    _embedder: Embedder = PrivateAttr()
    _owns_embedder: bool = PrivateAttr(default=False)

    def __init__(
        self,
        model: str | None = None,
        *,
        idle_timeout: float | int | str | None = None,
        keep_alive: KeepAlive = None,
        embedder: Embedder | None = None,
        **kwargs: Any,
    ) -> None:
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k in BaseEmbedding.model_fields}
        settings = dict(kwargs.pop("lazyembed_settings", None) or {}, **kwargs)
        # LlamaIndex spells the model ``model_name`` (and serialises it so): accept both.
        name = fields.pop("model_name", None)
        if model is None and embedder is None:
            model = name
        built, owns = make_embedder(embedder, model, idle_timeout, settings)
        fields.update(
            model_name=built.model_name,
            idle_timeout=idle_timeout,
            keep_alive=keep_alive,
            lazyembed_settings=settings,
        )
        super().__init__(**fields)
        self._embedder = built
        self._owns_embedder = owns

    @classmethod
    def class_name(cls) -> str:
        return "LazyEmbedEmbedding"

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    def _get_query_embedding(self, query: str) -> Embedding:
        return query_vectors(self._embedder, [query], self.keep_alive)[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return document_vectors(self._embedder, texts, self.keep_alive)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    def close(self) -> None:
        """Close the Embedder if this object created it (a shared one stays open)."""
        if self._owns_embedder:
            self._embedder.close()
