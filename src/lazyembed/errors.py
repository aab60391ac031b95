"""Every error lazyembed raises on purpose derives from `LazyEmbedError`.

Each one also derives from the builtin a caller would naturally catch (TypeError for a
wrong type, ValueError for a bad value, ...), so `except ValueError` keeps working.
"""

from __future__ import annotations


class LazyEmbedError(Exception):
    """Base class of all lazyembed errors."""


class InputTypeError(LazyEmbedError, TypeError):
    """An input to embed() has the wrong type (None, bytes, nested list, ...)."""


class InvalidInputError(LazyEmbedError, ValueError):
    """An input to embed() has the right type but an unusable value (empty list, ...)."""


class ConfigError(LazyEmbedError, ValueError):
    """A setting is invalid; the message names the key, the value and where it came from."""


class ModelNotFoundError(LazyEmbedError, FileNotFoundError):
    """The model spec resolved to no local files; the message lists every place looked."""


class ModelConversionError(LazyEmbedError, RuntimeError):
    """The source weights could not be converted to an ONNX graph."""


class ModelLoadError(LazyEmbedError, RuntimeError):
    """Loading the model failed (every waiter of a single-flight load gets this)."""


class WorkerDiedError(LazyEmbedError, RuntimeError):
    """The isolated worker process died while serving a call."""
