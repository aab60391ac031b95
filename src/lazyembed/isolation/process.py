"""One isolated worker process as the parent sees it: start it, wait for READY, stop it.

Processes start from a ``forkserver`` context on Linux (``spawn`` elsewhere). The fork
server pre-imports numpy, onnxruntime, tokenizers and the runtime once, so a (re)load is
a fork plus a model load instead of a fresh interpreter and its imports. It is
multiprocessing's process-wide fork server: it holds those imports (shared
copy-on-write with its workers) but never a model. `prestart()` starts it ahead of the
first load. Each worker is a child of the fork server, which reaps it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import multiprocessing.connection
import signal
import socket
import struct
import sys
import threading
import time
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

from lazyembed._fork import after_fork_in_child
from lazyembed.errors import ModelLoadError
from lazyembed.isolation import _multiprocessing_workarounds as workarounds
from lazyembed.isolation.protocol import HEADER, OP_QUIT, STATUS_ERROR, STATUS_READY, remote_error
from lazyembed.isolation.worker import worker_main
from lazyembed.runtime import RuntimeSpec

__all__ = ["PRELOAD", "WorkerProcess", "context", "describe_exit", "prestart"]

log = logging.getLogger("lazyembed")

#: Modules the fork server imports once, so each worker starts with them loaded.
PRELOAD = [
    "numpy",
    "onnxruntime",
    "tokenizers",
    "lazyembed.runtime",
    "lazyembed.isolation.worker",
]

_CONTEXT_LOCK = threading.Lock()  # guards _CONTEXT creation and the fork server preload
_CONTEXT: BaseContext | None = None


@after_fork_in_child
def _new_context_lock() -> None:
    """A child forked while another thread created the context must not hang."""
    global _CONTEXT_LOCK
    _CONTEXT_LOCK = threading.Lock()


def context() -> BaseContext:
    """The process-start context: forkserver with preloads on Linux, spawn elsewhere."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            workarounds.install_main_guard()
            if sys.platform.startswith("linux"):
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(PRELOAD)
                _CONTEXT = ctx
            else:
                _CONTEXT = multiprocessing.get_context("spawn")
        return _CONTEXT


def uses_fork_server() -> bool:
    """True once a worker context exists and it is the fork server's."""
    ctx = _CONTEXT
    return ctx is not None and ctx.get_start_method() == "forkserver"


def prestart() -> None:
    """Start the fork server now (cheap: its imports run in the background, no model).

    Call when isolation is configured, e.g. at Embedder construction, so the first load
    does not also pay for starting an interpreter and importing ONNX Runtime. In a
    forked child this starts the child's own fork server.
    """
    ctx = context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the OOM killer sends SIGKILL)" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"


def set_stall_timeout(conn: multiprocessing.connection.Connection, seconds: float) -> bool:
    """Make a read or write on our end of the pipe fail after `seconds` without progress.

    Sets SO_RCVTIMEO and SO_SNDTIMEO on the parent's socket (a duplex Pipe is a
    socketpair on Unix): a worker stopped in the middle of a reply, or while a large
    request is being written, then makes ``recv``/``send`` raise BlockingIOError instead
    of blocking forever. Returns False where the pipe is not a socket.
    """
    if not math.isfinite(seconds) or seconds <= 0:
        sec, usec = 0, 0  # no timeout
    else:
        sec = min(int(seconds), 2**31 - 1)
        usec = max(int((seconds - int(seconds)) * 1_000_000), 1 if sec == 0 else 0)
    timeval = struct.pack("ll", sec, usec)
    try:
        with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    except (OSError, AttributeError, ValueError) as exc:
        log.debug("no stall timeout on the isolated worker's pipe: %s", exc)
        return False
    return True


class WorkerProcess:
    """One worker process and its pipe (the parent's end).

    Stopping is idempotent and thread-safe: `stop` detaches the worker under
    `_stop_lock` (held for a few statements, never across a wait), so exactly one thread
    kills, joins and closes the process. The pipe is never closed under a call in
    flight (its fd could be reused while that call still reads it): a call marks the
    worker in use, and whichever of `stop` and `end_call` comes last closes the pipe.
    """

    def __init__(self, spec: RuntimeSpec, load_timeout: float, stall_timeout: float) -> None:
        self._stop_lock = threading.Lock()  # guards _detached, _in_call
        self._detached = False  # set once, by the one thread that stops this worker
        self._in_call = False  # a call is using the pipe (between begin_ and end_call)
        #: Recorded by `stop` before it closes the process; None until then, or if the
        #: process never exited.
        self.exitcode: int | None = None
        ctx = context()
        parent_end, child_end = ctx.Pipe(duplex=True)
        process = ctx.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(child_end, spec),
            name=workarounds.WORKER_NAME,
            daemon=True,
        )
        started = time.perf_counter()
        try:
            process.start()
        except BaseException:
            parent_end.close()
            child_end.close()
            raise
        child_end.close()  # only the worker holds it now, so its death is EOF here
        self.process: BaseProcess = process
        self.conn: multiprocessing.connection.Connection = parent_end
        self.pid: int = int(process.pid or 0)
        self.stall_timeout = stall_timeout
        try:
            self._wait_ready(spec, load_timeout)
        except BaseException:
            self.stop(1.0)
            raise
        set_stall_timeout(parent_end, stall_timeout)
        self.load_seconds = time.perf_counter() - started

    def is_alive(self) -> bool:
        """False once stopped; never touches a process another thread may be closing."""
        with self._stop_lock:
            return not self._detached and self.process.is_alive()

    def begin_call(self, stall_timeout: float) -> bool:
        """Mark the pipe in use (caller holds the runtime's lock); False if stopped."""
        with self._stop_lock:
            if self._detached:
                return False
            self._in_call = True
        if stall_timeout != self.stall_timeout:
            set_stall_timeout(self.conn, stall_timeout)
            self.stall_timeout = stall_timeout
        return True

    def end_call(self) -> None:
        """The call is done with the pipe; close it if the worker was stopped meanwhile."""
        with self._stop_lock:
            self._in_call = False
            close_pipe = self._detached
        if close_pipe:
            self.conn.close()

    def stop(self, timeout: float, *, kill: bool = False) -> bool:
        """Ask the worker to quit (or kill it), join, then terminate, then kill.

        Returns False, doing nothing, when another thread stopped (or is stopping) this
        worker. The pipe is closed here unless a call is using it, in which case
        `end_call` closes it. A method of the worker, not of the runtime, so
        `weakref.finalize` can hold it without keeping the runtime alive.
        """
        with self._stop_lock:
            if self._detached:
                return False
            self._detached = True
            owns_pipe = not self._in_call
        process, conn = self.process, self.conn
        if kill:
            with contextlib.suppress(OSError, ValueError):
                process.kill()
        if owns_pipe:
            try:
                if not kill and process.is_alive():
                    conn.send_bytes(OP_QUIT)
            except (OSError, ValueError):
                pass
            finally:
                conn.close()  # also makes a worker stuck in recv see EOF
        self._join(process, timeout)
        return True

    def _join(self, process: BaseProcess, timeout: float) -> None:
        try:
            process.join(timeout)
            if process.exitcode is None:
                process.terminate()
                process.join(1.0)
            if process.exitcode is None:
                process.kill()
                process.join(1.0)
            self.exitcode = process.exitcode  # before close(): a closed Process has none
            if self.exitcode is None:
                log.warning("isolated worker %s did not exit", self.pid)
            else:
                process.close()
        except (OSError, ValueError) as exc:  # never raise from a stop (finalizer, exit)
            log.warning("stopping isolated worker %s failed: %s", self.pid, exc)

    def abandon_in_child(self) -> None:
        """In a forked child: drop this worker, which is the parent's, without touching it.

        Closes only the child's copies of its fds, so the worker still sees EOF when the
        parent dies, and makes multiprocessing forget it; `stop` is then a no-op.
        """
        self._stop_lock = threading.Lock()  # another thread may have held it at fork
        self._detached = True
        self._in_call = False
        with contextlib.suppress(OSError):
            self.conn.close()
        workarounds.forget_inherited_process(self.process)

    def _wait_ready(self, spec: RuntimeSpec, timeout: float) -> None:
        if not self.conn.poll(None if math.isinf(timeout) else timeout):
            raise ModelLoadError(
                f"isolated worker {self.pid} did not load {spec.onnx_path} in {timeout:.0f} s"
            )
        try:
            reply = self.conn.recv_bytes()
        except (EOFError, OSError):
            self.process.join(1.0)
            raise ModelLoadError(
                f"isolated worker {self.pid} died while loading {spec.onnx_path}: "
                f"{describe_exit(self.process.exitcode)}"
            ) from None
        status = HEADER.unpack_from(reply)[0]
        if status == STATUS_ERROR:
            cause = remote_error(reply)
            raise ModelLoadError(f"isolated worker could not load the model: {cause}") from cause
        if status != STATUS_READY:
            raise ModelLoadError(f"isolated worker sent an unexpected reply ({status:#x})")
