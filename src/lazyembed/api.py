"""Module-level functions over one default `Embedder`, created on first use.

The seed project's names: `embed`, `embed_numpy`, `unload_model`, `get_memory_usage`,
`set_idle_timeout`, `get_embedding_dimension`, `get_max_tokens`, `warmup`. The default
Embedder reads its settings from the config file and ``LAZYEMBED_*`` environment.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, overload

from lazyembed._fork import after_fork_in_child
from lazyembed.config import KeepAliveLike
from lazyembed.embedder import Embedder, FloatArray

_default: Embedder | None = None
_default_lock = threading.Lock()  # guards creation of _default only


@after_fork_in_child
def _new_lock_after_fork() -> None:
    """A child forked while another thread created the default Embedder must not hang."""
    global _default_lock
    _default_lock = threading.Lock()


def get_default_embedder() -> Embedder:
    """The process-wide Embedder behind the module functions (created once, lazily)."""
    global _default
    embedder = _default
    if embedder is None:
        with _default_lock:
            if _default is None:
                _default = Embedder()
            embedder = _default
    return embedder


@overload
def embed(  # type: ignore[overload-overlap]  # a str is also an Iterable[str]
    texts: str, *, keep_alive: KeepAliveLike = None
) -> list[float]: ...


@overload
def embed(texts: Iterable[str], *, keep_alive: KeepAliveLike = None) -> list[list[float]]: ...


def embed(
    texts: str | Iterable[str], *, keep_alive: KeepAliveLike = None
) -> list[float] | list[list[float]]:
    """Embed one text (→ 384 floats) or a list of texts (→ a list of vectors)."""
    return get_default_embedder().embed(texts, keep_alive=keep_alive)


def embed_numpy(texts: str | Iterable[str], *, keep_alive: KeepAliveLike = None) -> FloatArray:
    """Embed texts into a float32 array of shape (n, 384)."""
    return get_default_embedder().embed_numpy(texts, keep_alive=keep_alive)


def unload_model() -> bool:
    """Free the default model now; True if one was loaded."""
    embedder = _default
    return embedder.unload_model() if embedder is not None else False


def get_memory_usage() -> dict[str, Any]:
    """Measured memory and lifecycle figures of the default Embedder."""
    return get_default_embedder().get_memory_usage()


def set_idle_timeout(value: KeepAliveLike) -> None:
    """Change the default Embedder's idle timeout ("30m", 90, 0, "never")."""
    get_default_embedder().set_idle_timeout(value)


def get_embedding_dimension() -> int:
    return get_default_embedder().get_embedding_dimension()


def get_max_tokens() -> int:
    return get_default_embedder().get_max_tokens()


def warmup() -> None:
    """Load the default model now rather than on the first embed()."""
    get_default_embedder().warmup()
