"""Isolated-process mode: the model lives in a worker process that looks like a Runtime.

Why: unloading in-process leaves ONNX Runtime's global state and the allocator's kept
pages behind; when the worker exits, every byte of the model leaves with it. The model
is converted in the parent beforehand, so the worker only loads a ready ``.onnx`` file
described by a picklable `RuntimeSpec`.

Modules: `client` (`IsolatedRuntime`, the parent's side), `process` (one worker process:
start, stop, the fork server), `worker` (the child's loop), `protocol` (the pipe's
bytes), `_multiprocessing_workarounds` (every process-wide change to multiprocessing).
"""

from __future__ import annotations

from lazyembed.isolation._multiprocessing_workarounds import fork_server_pid
from lazyembed.isolation.client import (
    CALL_TIMEOUT,
    LOAD_TIMEOUT,
    PER_TEXT_TIMEOUT,
    IsolatedRuntime,
    load_isolated,
)
from lazyembed.isolation.process import PRELOAD, prestart

__all__ = [
    "CALL_TIMEOUT",
    "LOAD_TIMEOUT",
    "PER_TEXT_TIMEOUT",
    "PRELOAD",
    "IsolatedRuntime",
    "fork_server_pid",
    "load_isolated",
    "prestart",
]
