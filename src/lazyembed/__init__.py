"""lazyembed: local sentence embeddings that hold the model in RAM only while it is used.

Names are imported on first access (PEP 562), so ``import lazyembed`` stays cheap for the
CLI and for submodules such as ``lazyembed.config`` that need none of ONNX Runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lazyembed._version import __version__

_EXPORTS = {
    "embed": "lazyembed.api",
    "embed_numpy": "lazyembed.api",
    "embed_query": "lazyembed.api",
    "embed_documents": "lazyembed.api",
    "get_default_models": "lazyembed.api",
    "Models": "lazyembed.registry",
    "KeepAlive": "lazyembed.config",
    "ClosedError": "lazyembed.errors",
    "InputTooLongError": "lazyembed.errors",
    "ModelBusyError": "lazyembed.errors",
    "ModelCacheError": "lazyembed.errors",
    "PromptNotFoundError": "lazyembed.errors",
    "UnsupportedModelError": "lazyembed.errors",
    "UnsupportedOptionError": "lazyembed.errors",
    "WorkerTimeoutError": "lazyembed.errors",
    "BackendUnavailableError": "lazyembed.errors",
    "get_default_embedder": "lazyembed.api",
    "get_embedding_dimension": "lazyembed.api",
    "get_max_tokens": "lazyembed.api",
    "get_memory_usage": "lazyembed.api",
    "set_idle_timeout": "lazyembed.api",
    "unload_model": "lazyembed.api",
    "warmup": "lazyembed.api",
    "Embedder": "lazyembed.embedder",
    "ConfigError": "lazyembed.errors",
    "InputTypeError": "lazyembed.errors",
    "InvalidInputError": "lazyembed.errors",
    "LazyEmbedError": "lazyembed.errors",
    "ModelConversionError": "lazyembed.errors",
    "ModelLoadError": "lazyembed.errors",
    "ModelNotFoundError": "lazyembed.errors",
    "WorkerDiedError": "lazyembed.errors",
}

__all__ = [
    "BackendUnavailableError",
    "ClosedError",
    "ConfigError",
    "Embedder",
    "InputTooLongError",
    "InputTypeError",
    "InvalidInputError",
    "KeepAlive",
    "LazyEmbedError",
    "ModelBusyError",
    "ModelCacheError",
    "ModelConversionError",
    "ModelLoadError",
    "ModelNotFoundError",
    "Models",
    "PromptNotFoundError",
    "UnsupportedModelError",
    "UnsupportedOptionError",
    "WorkerDiedError",
    "WorkerTimeoutError",
    "__version__",
    "embed",
    "embed_documents",
    "embed_numpy",
    "embed_query",
    "get_default_embedder",
    "get_default_models",
    "get_embedding_dimension",
    "get_max_tokens",
    "get_memory_usage",
    "set_idle_timeout",
    "unload_model",
    "warmup",
]

if TYPE_CHECKING:
    from lazyembed.api import (
        embed,
        embed_documents,
        embed_numpy,
        embed_query,
        get_default_embedder,
        get_default_models,
        get_embedding_dimension,
        get_max_tokens,
        get_memory_usage,
        set_idle_timeout,
        unload_model,
        warmup,
    )
    from lazyembed.config import KeepAlive
    from lazyembed.embedder import Embedder
    from lazyembed.errors import (
        BackendUnavailableError,
        ClosedError,
        ConfigError,
        InputTooLongError,
        InputTypeError,
        InvalidInputError,
        LazyEmbedError,
        ModelBusyError,
        ModelCacheError,
        ModelConversionError,
        ModelLoadError,
        ModelNotFoundError,
        PromptNotFoundError,
        UnsupportedModelError,
        UnsupportedOptionError,
        WorkerDiedError,
        WorkerTimeoutError,
    )
    from lazyembed.registry import Models


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lazyembed' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
