"""What the server needs of an Embedder: the one type every server room may import.

The batcher, its model calls, the served models and the app all take an `EmbedderLike`
(``lazyembed.Embedder``, or a fake in tests). It sits below them all, so none of them
imports another for the type (``lazyembed.server.batcher`` re-exports it).
"""

from __future__ import annotations

from typing import Any, Protocol

from lazyembed.config.durations import KeepAlive
from lazyembed.report import MemoryReport
from lazyembed.server.wire import FloatArray


class EmbedderLike(Protocol):
    """What the server needs of ``lazyembed.Embedder`` (a fake satisfies it in tests)."""

    @property
    def model_name(self) -> str: ...

    @property
    def settings(self) -> Any: ...

    @property
    def is_loaded(self) -> bool: ...

    def embed_numpy(self, texts: list[str], *, keep_alive: KeepAlive) -> FloatArray: ...

    def count_tokens(self, texts: list[str], *, truncate: bool = True) -> list[int]: ...

    def warmup(self, *, keep_alive: KeepAlive) -> None: ...

    def unload_model(self) -> bool: ...

    def memory_report(self, *, events: bool = True) -> MemoryReport: ...

    def get_embedding_dimension(self) -> int: ...

    def get_max_tokens(self) -> int: ...
