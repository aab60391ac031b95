"""Every exception lazyembed raises derives from `LazyEmbedError` and is defined here.

Each one also derives from the builtin a caller would naturally catch (TypeError for a
wrong type, ValueError for a bad value, ...), so ``except ValueError`` keeps working.
The server maps these classes to HTTP answers in one table (``server/errors.py``).
"""

from __future__ import annotations


class LazyEmbedError(Exception):
    """Base class of all lazyembed errors."""


# ---- inputs and settings ----------------------------------------------------------------


class InputTypeError(LazyEmbedError, TypeError):
    """An input to embed() has the wrong type (None, bytes, nested list, ...)."""


class InvalidInputError(LazyEmbedError, ValueError):
    """An input to embed() has the right type but an unusable value (empty list, ...)."""


class InputTooLongError(InvalidInputError):
    """An input exceeds the model's context and the caller asked not to truncate."""


class PromptNotFoundError(InvalidInputError, KeyError):
    """A ``prompt_name`` the model does not define; the message lists the model's prompts."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnsupportedOptionError(InvalidInputError):
    """A sentence-transformers option lazyembed cannot honour (tensors, token embeddings,
    setting max_seq_length, ...); the message names it and what to do instead."""


class ConfigError(LazyEmbedError, ValueError):
    """A setting is invalid; the message names the key, the value and where it came from."""


# ---- models -------------------------------------------------------------------------------


class ModelNotFoundError(LazyEmbedError, FileNotFoundError):
    """The model spec resolved to no local files; the message lists every place looked."""


class UnsupportedModelError(LazyEmbedError, ValueError):
    """The model's architecture cannot be converted; the message lists what is supported."""


class ModelConversionError(LazyEmbedError, RuntimeError):
    """The source weights could not be converted to an ONNX graph."""


class ModelCacheError(ModelConversionError):
    """A damaged converted-model file could not be moved aside or deleted.

    The message names the file and what to do (permissions, or delete it by hand).
    """


class ModelLoadError(LazyEmbedError, RuntimeError):
    """Loading the model failed (every waiter of a single-flight load gets this)."""


class BackendUnavailableError(LazyEmbedError, RuntimeError):
    """The chosen backend or precision cannot run here (package missing, CPU lacks it)."""


# ---- running ------------------------------------------------------------------------------


class ClosedError(LazyEmbedError, RuntimeError):
    """The object (Embedder, Lifecycle, cache, batcher) was closed and takes no more work."""


class WorkerDiedError(LazyEmbedError, RuntimeError):
    """The isolated worker process died while serving a call."""


class WorkerTimeoutError(WorkerDiedError, TimeoutError):
    """The isolated worker did not answer in time (stopped or hung); it is ended."""


class WorkerError(LazyEmbedError, RuntimeError):
    """The isolated worker failed a call with an error that could not be sent back as
    itself (the message names its type); the worker keeps running."""


class ModelBusyError(LazyEmbedError, RuntimeError):
    """No room for another model within the memory budget before ``load_timeout``.

    The message names the models that hold the memory and why each could not unload.
    """


class ClientDisconnectedError(LazyEmbedError, ConnectionError):
    """A server client went away before its answer: the work is dropped, nothing is sent.

    The server records status 499 and logs nothing: a hung-up client is not an error.
    """


class CLIError(LazyEmbedError, RuntimeError):
    """A user-facing failure of a command (bad arguments, server said no, ...)."""


class ExtraNotInstalledError(LazyEmbedError, ImportError):
    """A framework adapter was imported without its framework; the message names the extra."""


# ---- warnings -----------------------------------------------------------------------------


class CacheWarning(LazyEmbedError, UserWarning):
    """The persistent cache had to move a bad file aside or fall back to memory only."""
