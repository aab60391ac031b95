"""The isolated worker's main loop (runs in the child process).

It loads the model from a `RuntimeSpec`, says READY, then answers encode requests until
told to quit or until the pipe reports EOF (the parent is gone, even if SIGKILLed).
"""

from __future__ import annotations

import multiprocessing.connection
import pickle
import signal

from lazyembed.isolation.protocol import (
    OP_ENCODE,
    error_frame,
    ready_frame,
    reply_frame,
)
from lazyembed.runtime import RuntimeSpec

__all__ = ["worker_main"]


def worker_main(conn: multiprocessing.connection.Connection, spec: RuntimeSpec) -> None:
    """Load the model, then answer encode requests until told to quit or the pipe closes."""
    # Ctrl-C goes to the whole process group; the parent decides when the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from lazyembed.runtime import load_runtime

    try:
        runtime = load_runtime(spec)
    except BaseException as exc:
        conn.send_bytes(error_frame(exc))
        return
    conn.send_bytes(ready_frame(spec.dimension))
    try:
        while True:
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):
                return  # the parent is gone
            if message[:1] != OP_ENCODE:
                return
            try:
                frame = reply_frame(runtime.encode(pickle.loads(message[1:])))
            except Exception as exc:
                conn.send_bytes(error_frame(exc))
                continue
            conn.send_bytes(frame)
    finally:
        runtime.close()
