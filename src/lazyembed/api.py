"""Module-level functions over one default `Models` registry, created on first use.

The seed project's names (`embed`, `embed_numpy`, `unload_model`, `get_memory_usage`,
`set_idle_timeout`, `get_embedding_dimension`, `get_max_tokens`, `warmup`), each taking
an optional ``model=``: one process can use several models under one memory budget. The
default registry reads its settings from the config file and ``LAZYEMBED_*`` environment;
like any ``Models()`` it is a thin client of the user's daemon when ``share`` resolves to
one (`Models.__new__`), so these functions then use the daemon's models.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, overload

from lazyembed._fork import after_fork_in_child
from lazyembed.config import KeepAliveLike
from lazyembed.embedder import Embedder, FloatArray
from lazyembed.registry import Models

_default: Models | None = None
_default_lock = threading.Lock()  # guards creation of _default only


@after_fork_in_child
def _new_lock_after_fork() -> None:
    """A child forked while another thread created the default registry must not hang."""
    global _default_lock
    _default_lock = threading.Lock()


def get_default_models() -> Models:
    """The process-wide registry behind the module functions (created once, lazily)."""
    global _default
    models = _default
    if models is None:
        with _default_lock:
            if _default is None:
                _default = Models()
            models = _default
    return models


def get_default_embedder(model: str | None = None) -> Embedder:
    """The Embedder the module functions use for ``model`` (default: the configured one)."""
    return get_default_models().get(model)


@overload
def embed(  # type: ignore[overload-overlap]  # a str is also an Iterable[str]
    texts: str,
    *,
    model: str | None = None,
    keep_alive: KeepAliveLike = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> list[float]: ...


@overload
def embed(
    texts: Iterable[str],
    *,
    model: str | None = None,
    keep_alive: KeepAliveLike = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> list[list[float]]: ...


def embed(
    texts: str | Iterable[str],
    *,
    model: str | None = None,
    keep_alive: KeepAliveLike = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> list[float] | list[list[float]]:
    """Embed one text (→ one vector) or a list of texts (→ a list of vectors)."""
    return get_default_embedder(model).embed(
        texts, keep_alive=keep_alive, prompt_name=prompt_name, prompt=prompt
    )


def embed_numpy(
    texts: str | Iterable[str],
    *,
    model: str | None = None,
    keep_alive: KeepAliveLike = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> FloatArray:
    """Embed texts into a float32 array of shape (n, dimension)."""
    return get_default_embedder(model).embed_numpy(
        texts, keep_alive=keep_alive, prompt_name=prompt_name, prompt=prompt
    )


def embed_query(
    texts: str | Iterable[str], *, model: str | None = None, keep_alive: KeepAliveLike = None
) -> list[float] | list[list[float]]:
    """Embed search queries with the model's query prompt, when it has one."""
    return get_default_embedder(model).embed_query(texts, keep_alive=keep_alive)


def embed_documents(
    texts: Iterable[str], *, model: str | None = None, keep_alive: KeepAliveLike = None
) -> list[list[float]]:
    """Embed documents with the model's document/passage prompt, when it has one."""
    return get_default_embedder(model).embed_documents(texts, keep_alive=keep_alive)


def unload_model(model: str | None = None) -> bool:
    """Free a model now (None: every loaded model); True if one was loaded."""
    models = _default
    return models.unload(model) if models is not None else False


def get_memory_usage(model: str | None = None) -> dict[str, Any]:
    """Measured memory and lifecycle figures of a model (default: the configured one)."""
    return get_default_embedder(model).get_memory_usage()


def set_idle_timeout(value: KeepAliveLike, model: str | None = None) -> None:
    """Change the idle timeout ("30m", 90, 0, "never") of one model or (None) all."""
    get_default_models().set_idle_timeout(value, model)


def get_embedding_dimension(model: str | None = None) -> int:
    return get_default_embedder(model).get_embedding_dimension()


def get_max_tokens(model: str | None = None) -> int:
    return get_default_embedder(model).get_max_tokens()


def warmup(model: str | None = None, *, keep_alive: KeepAliveLike = None) -> None:
    """Load a model now rather than on its first embed()."""
    get_default_embedder(model).warmup(keep_alive=keep_alive)
