"""What the adapters share: building their Embedder, and query/document vectors.

Queries go through `Embedder.embed_query` and stored texts through
`Embedder.embed_documents`, so each gets the model's query or document prompt where the
model has one (and the plain vector where it has none), exactly as in the library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lazyembed.embedder import Embedder
from lazyembed.errors import ConfigError, ExtraNotInstalledError

# A per-call keep-alive as the Embedder takes it: seconds, a duration, "never", or None.
KeepAlive = float | int | str | None


def missing_extra(adapter: str, extra: str, exc: ImportError) -> ExtraNotInstalledError:
    """The error an adapter raises when imported without its framework."""
    return ExtraNotInstalledError(
        f"lazyembed.integrations.{adapter} needs {exc.name or 'its framework'}, which is not "
        f"installed: pip install 'lazyembed[{extra}]'"
    )


def make_embedder(
    embedder: Embedder | None,
    model: str | None,
    idle_timeout: float | int | str | None,
    settings: dict[str, Any],
) -> tuple[Embedder, bool]:
    """The adapter's Embedder and whether the adapter owns it (then it closes it)."""
    if embedder is not None:
        if model is not None or idle_timeout is not None or settings:
            raise ConfigError("pass either embedder= or model/idle_timeout/settings, not both")
        return embedder, False
    if idle_timeout is not None:
        settings = {**settings, "idle_timeout": idle_timeout}
    return Embedder(model, **settings), True


def query_vectors(
    embedder: Embedder, texts: Sequence[str], keep_alive: KeepAlive
) -> list[list[float]]:
    """One vector per search query (empty in, empty out: frameworks send empty batches)."""
    if not texts:
        return []
    return embedder.embed_query(list(texts), keep_alive=keep_alive)


def document_vectors(
    embedder: Embedder, texts: Sequence[str], keep_alive: KeepAlive
) -> list[list[float]]:
    """One vector per stored text (empty in, empty out)."""
    if not texts:
        return []
    return embedder.embed_documents(list(texts), keep_alive=keep_alive)
