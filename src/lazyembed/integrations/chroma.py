"""Chroma: `LazyEmbedEmbeddingFunction`, a registered chromadb ``EmbeddingFunction``.

Install with ``pip install 'lazyembed[chroma]'``. Importing this module registers the
function under the name ``"lazyembed"``; a collection created with it stores its config
(model, variant, settings), so a later process reopens the collection without passing the
function — after importing this module, which is what registers the name there too.
Queries use the model's query prompt where it has one. The model loads at the first embed
and unloads when idle, like any Embedder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lazyembed.embedder import Embedder
from lazyembed.errors import ConfigError
from lazyembed.integrations._common import (
    KeepAlive,
    document_vectors,
    make_embedder,
    missing_extra,
    query_vectors,
)

try:
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
    from chromadb.utils.embedding_functions import register_embedding_function
except ImportError as exc:  # the extra is not installed
    raise missing_extra("chroma", "chroma", exc) from exc

__all__ = ["LazyEmbedEmbeddingFunction"]

_CONFIG_KEYS = frozenset({"model", "variant", "idle_timeout", "keep_alive", "settings"})
_JSON_SCALARS = (str, int, float, bool, type(None))


def _json_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a collection can store (JSON): paths as text, others refused."""
    stored: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Path):
            value = str(value)
        elif not isinstance(value, _JSON_SCALARS):
            raise ConfigError(
                f"setting {key}={value!r} cannot be stored in a Chroma collection's config "
                "(JSON); pass an Embedder with embedder= instead"
            )
        stored[key] = value
    return stored


def _float32(vectors: list[list[float]]) -> Embeddings:
    """Chroma's form: one float32 numpy array per vector."""
    return list(np.asarray(vectors, dtype=np.float32))


@register_embedding_function
class LazyEmbedEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma embeddings computed in-process by a lazily loaded lazyembed model.

    Arguments as for `lazyembed.Embedder`: ``model``, ``idle_timeout`` and any setting as a
    keyword, or an existing ``embedder=``. The stored config always names the resolved
    model and its variant, so a reopened collection embeds with the same vectors.
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
        self._settings = _json_settings(settings) if embedder is None else {}
        self._idle_timeout = idle_timeout
        self.keep_alive = keep_alive
        self.embedder, self._owns_embedder = make_embedder(embedder, model, idle_timeout, settings)

    def __call__(self, input: Documents) -> Embeddings:
        """One float32 vector per document."""
        return _float32(document_vectors(self.embedder, input, self.keep_alive))

    def embed_query(self, input: Documents) -> Embeddings:
        """One float32 vector per query, with the model's query prompt where it has one."""
        return _float32(query_vectors(self.embedder, input, self.keep_alive))

    @staticmethod
    def name() -> str:
        return "lazyembed"

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "ip", "l2"]

    def get_config(self) -> dict[str, Any]:
        settings = self.embedder.settings
        return {
            "model": self.embedder.model_name,
            "variant": settings.variant,
            "idle_timeout": self._idle_timeout,
            "keep_alive": self.keep_alive,
            "settings": {k: v for k, v in self._settings.items() if k != "variant"},
        }

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> LazyEmbedEmbeddingFunction:
        LazyEmbedEmbeddingFunction.validate_config(config)
        return LazyEmbedEmbeddingFunction(
            config["model"],
            variant=config.get("variant", "fp32"),
            idle_timeout=config.get("idle_timeout"),
            keep_alive=config.get("keep_alive"),
            **config.get("settings", {}),
        )

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        unknown = set(config) - _CONFIG_KEYS
        if unknown:
            raise ConfigError(f"unknown keys in a lazyembed embedding config: {sorted(unknown)}")
        if not isinstance(config.get("model"), str):
            raise ConfigError("a lazyembed embedding config needs the model name (a str)")
        if not isinstance(config.get("settings", {}), dict):
            raise ConfigError("'settings' in a lazyembed embedding config must be an object")

    def validate_config_update(
        self, old_config: dict[str, Any], new_config: dict[str, Any]
    ) -> None:
        for key in ("model", "variant"):
            if key in new_config and new_config[key] != old_config.get(key):
                raise ConfigError(
                    f"the {key} of a collection's embeddings cannot change: its stored "
                    "vectors were made with the old one"
                )

    def close(self) -> None:
        """Close the Embedder if this object created it (a shared one stays open)."""
        if self._owns_embedder:
            self.embedder.close()
