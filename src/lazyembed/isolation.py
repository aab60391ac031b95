"""Isolated-process mode: the model lives in a worker process that looks like a Runtime.

Why: unloading in-process leaves ONNX Runtime's global state and glibc's kept pages
behind (~16 MB measured); when the worker exits, every byte of the model leaves with it.
`IsolatedRuntime` has the in-process runtime's interface (`encode`, `close`), so the
lifecycle drives it unchanged: unload = close() = the worker exits.

Process start: a ``forkserver`` context on Linux (``spawn`` elsewhere). The fork server
pre-imports numpy, onnxruntime, tokenizers and lazyembed.runtime once, so a (re)load is
a fork plus a model load instead of a fresh interpreter and ~190 ms of imports (measured
here, unloaded → first vector, median of 7: isolated ~235 ms, in-process ~180 ms; the
first load without a running fork server ~660 ms). The fork server is multiprocessing's
process-wide one; it holds the imports (~71 MB RSS, shared copy-on-write with its
workers) but never a model: that is the price of fast reloads while unloaded.
`prestart()` starts it ahead of the first load. The model is converted in the parent
beforehand, so the worker only loads a ready ``.onnx`` file described by a picklable
`RuntimeSpec`. The worker never re-runs the application's ``__main__`` (see
`_install_main_guard`), so scripts need no ``if __name__ == "__main__":`` guard.

Transport, one duplex pipe per worker:
* request: one byte (``E`` encode, ``Q`` quit) + pickle of the list of texts. Measured
  against a length-prefixed UTF-8 frame, pickle was 3-15x faster (it is C; the frame
  needs a Python loop to split), and the strings need copying either way.
* reply: a 16-byte header (status, n, dim) then float32 vectors then int32 token counts,
  read with ``recv_bytes_into`` into a buffer allocated for this call; the returned
  vectors are a view of that buffer (no copy after the pipe read). Shared memory was
  not chosen: a batch of 32 vectors is 48 KiB (the pipe copy costs microseconds next to
  milliseconds of inference), and shared memory adds a resource tracker, segment
  lifetimes and leaks on SIGKILL. An empty list is answered in the parent (no round
  trip): a (0, dim) float32 array and no token counts, as in-process.

Worker death (OOM killer, SIGKILL): the call in flight raises `WorkerDiedError` naming
the exit code or signal; it is NOT retried (the call may be what killed the worker, and
retrying a huge batch would only do it twice). The runtime is then not `alive`; the next
`encode` starts a fresh worker by itself (counted in `restarts`), so even a lifecycle
that knows nothing of workers keeps working. A lifecycle that wants to record the death
can check `alive` and drop the runtime instead.

Thread safety: one call at a time over the pipe. `_lock` guards the pipe, the worker
handle and restarts; concurrent `encode` calls queue on it (the in-process runtime runs
them concurrently; on two cores the worker's ORT threads are busy anyway). Stopping a
worker is idempotent: each `_Worker` has a small `_stop_lock`, held only for a few
statements, never across a wait, by whichever thread stops it — `close()` (with or
without `_lock`: it cannot get `_lock` when a call is stuck), the call in flight seeing
the worker die, a restart, or the finalizer. Under it, the first of them detaches the
worker and alone kills, joins and closes the process (recording its exit code first); the
others find it detached and leave it alone. The pipe is never closed under a call in
flight (the fd could be reused while that call still reads it): a call marks the worker
in use under `_stop_lock`, and whichever of the stopper and the call ends last closes it.

No zombies: the worker is a child of the fork server, which reaps it; `close()` asks it
to quit, joins with a timeout, then terminates and kills. A `weakref.finalize` closes a
runtime that was dropped without close(); at interpreter exit an atexit hook closes
every live runtime, then stops multiprocessing's fork server and resource tracker (and
reaps them) unless other multiprocessing children still need them — otherwise they
would outlive us as orphans, and a container's PID 1 may never reap them. A worker
whose parent is SIGKILLed exits by itself when its end of the pipe reports EOF.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import pickle
import signal
import struct
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np
import psutil

from lazyembed.errors import ModelLoadError, WorkerDiedError
from lazyembed.memory import MB
from lazyembed.runtime import EncodeResult, RuntimeSpec

__all__ = ["IsolatedRuntime", "fork_server_pid", "load_isolated", "prestart"]

log = logging.getLogger("lazyembed")

#: Modules the fork server imports once, so each worker starts with them loaded.
PRELOAD = ["numpy", "onnxruntime", "tokenizers", "lazyembed.runtime", "lazyembed.isolation"]

_OP_ENCODE = b"E"
_OP_QUIT = b"Q"
_HEADER = struct.Struct("<IIII")  # status, n, dim, reserved: 16 bytes keeps floats aligned
_STATUS_OK = 0x4F4B4F4B
_STATUS_ERROR = 0x45525221
_STATUS_READY = 0x52454459

_CONTEXT_LOCK = threading.Lock()  # guards _CONTEXT creation and the fork server preload
_CONTEXT: BaseContext | None = None

#: Every runtime not yet closed, for the exit hook (a WeakSet guards itself enough here:
#: it is only iterated at exit, over a copy).
_LIVE: weakref.WeakSet[IsolatedRuntime] = weakref.WeakSet()


_WORKER_NAME = "lazyembed-isolated-worker"


def _install_main_guard() -> None:
    """Keep the worker from re-running the user's ``__main__`` (caller holds _CONTEXT_LOCK).

    spawn and forkserver children normally re-import the parent's main script, which
    makes every script without an ``if __name__ == "__main__":`` guard start itself
    again in the worker (and pays for the script's imports on every load). The worker
    needs nothing from ``__main__``, so for processes named `_WORKER_NAME` only, the
    main-module keys are dropped from multiprocessing's preparation data; every other
    process is prepared exactly as before.
    """
    from multiprocessing import spawn

    original = spawn.get_preparation_data
    if getattr(original, "_lazyembed_guard", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        if name == _WORKER_NAME:
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    get_preparation_data._lazyembed_guard = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


def _context() -> BaseContext:
    """The process-start context: forkserver with preloads on Linux, spawn elsewhere."""
    global _CONTEXT
    with _CONTEXT_LOCK:
        if _CONTEXT is None:
            _install_main_guard()
            if sys.platform.startswith("linux"):
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(PRELOAD)
                _CONTEXT = ctx
            else:
                _CONTEXT = multiprocessing.get_context("spawn")
        return _CONTEXT


def prestart() -> None:
    """Start the fork server now (cheap: its imports run in the background, no model).

    Call when isolation is configured, e.g. at Embedder construction, so the first load
    does not also pay for starting an interpreter and importing ONNX Runtime.
    """
    ctx = _context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def fork_server_pid() -> int | None:
    """PID of multiprocessing's fork server, if running (for the memory report)."""
    from multiprocessing import forkserver

    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None


# --------------------------------------------------------------------------------------
# The worker (runs in the child process)
# --------------------------------------------------------------------------------------


def _error_frame(exc: BaseException) -> bytes:
    try:
        payload = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(payload)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        payload = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
    return _HEADER.pack(_STATUS_ERROR, 0, 0, 0) + payload


def _worker_main(conn: multiprocessing.connection.Connection, spec: RuntimeSpec) -> None:
    """Load the model, then answer encode requests until told to quit or the pipe closes."""
    # Ctrl-C goes to the whole process group; the parent decides when the worker stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from lazyembed.runtime import load_runtime

    try:
        runtime = load_runtime(spec)
    except BaseException as exc:
        conn.send_bytes(_error_frame(exc))
        return
    conn.send_bytes(_HEADER.pack(_STATUS_READY, 0, spec.dimension, 0))
    try:
        while True:
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):
                return  # the parent is gone
            if message[:1] != _OP_ENCODE:
                return
            try:
                texts = pickle.loads(message[1:])
                result = runtime.encode(texts)
                vectors = np.ascontiguousarray(result.vectors, dtype=np.float32)
                counts = np.asarray(result.token_counts, dtype=np.int32)
                n, dim = vectors.shape
                frame = bytearray(_HEADER.size + vectors.nbytes + counts.nbytes)
                _HEADER.pack_into(frame, 0, _STATUS_OK, n, dim, 0)
                end = _HEADER.size + vectors.nbytes
                frame[_HEADER.size : end] = vectors.data.cast("B")
                frame[end:] = counts.data.cast("B")
            except Exception as exc:
                conn.send_bytes(_error_frame(exc))
                continue
            conn.send_bytes(frame)
    finally:
        runtime.close()


# --------------------------------------------------------------------------------------
# The parent side
# --------------------------------------------------------------------------------------


def _describe_exit(exitcode: int | None) -> str:
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


def _stopped_by_close() -> WorkerDiedError:
    return WorkerDiedError("the isolated worker was stopped by close() during a call")


class _Worker:
    """One worker process and its pipe (the parent's end).

    Stopping is idempotent and thread-safe (module doc, "Thread safety"): `stop` detaches
    the worker under `_stop_lock`, so exactly one thread kills, joins and closes the
    process; the pipe is closed by whichever of `stop` and `end_call` comes last.
    """

    def __init__(self, spec: RuntimeSpec, load_timeout: float) -> None:
        self._stop_lock = threading.Lock()  # guards _detached, _in_call
        self._detached = False  # set once, by the one thread that stops this worker
        self._in_call = False  # a call is using the pipe (between begin_ and end_call)
        #: Recorded by `stop` before it closes the process; None until then, or if the
        #: process never exited.
        self.exitcode: int | None = None
        ctx = _context()
        parent_end, child_end = ctx.Pipe(duplex=True)
        process = ctx.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(child_end, spec),
            name=_WORKER_NAME,
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
        try:
            self._wait_ready(spec, load_timeout)
        except BaseException:
            self.stop(1.0)
            raise
        self.load_seconds = time.perf_counter() - started

    def is_alive(self) -> bool:
        """False once stopped; never touches a process another thread may be closing."""
        with self._stop_lock:
            return not self._detached and self.process.is_alive()

    def begin_call(self) -> bool:
        """Mark the pipe in use (caller holds the runtime's `_lock`); False if stopped."""
        with self._stop_lock:
            if self._detached:
                return False
            self._in_call = True
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
                    conn.send_bytes(_OP_QUIT)
            except (OSError, ValueError):
                pass
            finally:
                conn.close()  # also makes a worker stuck in recv see EOF
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
        return True

    def _wait_ready(self, spec: RuntimeSpec, timeout: float) -> None:
        if not self.conn.poll(timeout):
            raise ModelLoadError(
                f"isolated worker {self.pid} did not load {spec.onnx_path} in {timeout:.0f} s"
            )
        try:
            reply = self.conn.recv_bytes()
        except (EOFError, OSError):
            self.process.join(1.0)
            raise ModelLoadError(
                f"isolated worker {self.pid} died while loading {spec.onnx_path}: "
                f"{_describe_exit(self.process.exitcode)}"
            ) from None
        status = _HEADER.unpack_from(reply)[0]
        if status == _STATUS_ERROR:
            cause = pickle.loads(reply[_HEADER.size :])
            raise ModelLoadError(f"isolated worker could not load the model: {cause}") from cause
        if status != _STATUS_READY:
            raise ModelLoadError(f"isolated worker sent an unexpected reply ({status:#x})")


class IsolatedRuntime:
    """A model in a worker process, with the in-process runtime's `encode` and `close`."""

    def __init__(self, spec: RuntimeSpec, *, load_timeout: float = 120.0) -> None:
        self.spec = spec
        self.load_timeout = load_timeout
        #: Workers started after a death (the first one is not counted).
        self.restarts = 0
        self._lock = threading.Lock()  # guards _worker, _closed, restarts and the pipe
        self._closed = False
        self._worker: _Worker | None = _Worker(spec, load_timeout)
        self._finalizer = self._arm_finalizer(self._worker)
        _LIVE.add(self)

    def _arm_finalizer(self, worker: _Worker) -> weakref.finalize[Any, Any]:
        return weakref.finalize(self, worker.stop, 5.0)

    # ---- state ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        worker = self._worker
        return None if worker is None else worker.pid

    @property
    def alive(self) -> bool:
        """False once the worker has died or the runtime was closed."""
        worker = self._worker
        return worker is not None and worker.is_alive()

    @property
    def load_seconds(self) -> float | None:
        """Start → model loaded and warmed up, for the current worker."""
        worker = self._worker
        return None if worker is None else worker.load_seconds

    def memory_info(self) -> dict[str, Any]:
        """Measured (psutil) memory of the worker and of the fork server, in MB.

        USS (memory unique to the worker) is what leaves when it exits; its RSS also
        counts library pages shared with the fork server.
        """
        report: dict[str, Any] = {"worker_pid": self.pid, "worker_alive": self.alive}
        pid = self.pid
        if pid is not None:
            try:
                full = psutil.Process(pid).memory_full_info()
                report["worker_rss_mb"] = round(full.rss / MB, 1)
                report["worker_uss_mb"] = round(full.uss / MB, 1)
            except (psutil.Error, OSError):
                pass
        server = fork_server_pid()
        if server is not None:
            report["fork_server_pid"] = server
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(server).memory_info().rss
                report["fork_server_rss_mb"] = round(rss / MB, 1)
        report["worker_restarts"] = self.restarts
        return report

    # ---- calls ------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> EncodeResult:
        """Embed in the worker; see the module doc for what happens if it dies."""
        items = list(texts)
        dim = self.spec.dimension
        if not items:  # nothing for the worker to do: answer as the in-process runtime
            if self._closed:
                raise RuntimeError("IsolatedRuntime.encode() after close()")
            return EncodeResult(np.empty((0, dim), dtype=np.float32), [])
        request = _OP_ENCODE + pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._closed:
                raise RuntimeError("IsolatedRuntime.encode() after close()")
            worker = self._live_worker()
            if not worker.begin_call():  # a close() that gave up waiting stopped it
                raise self._died(worker)
            n = len(items)
            size = _HEADER.size + n * dim * 4 + n * 4
            buffer = np.empty(size, dtype=np.uint8)
            try:
                worker.conn.send_bytes(request)
                received = worker.conn.recv_bytes_into(buffer)
            except multiprocessing.BufferTooShort as exc:  # an error reply, longer
                return self._raise_remote(exc.args[0])
            except (EOFError, OSError) as exc:
                raise self._died(worker) from exc
            except BaseException:
                # Interrupted (KeyboardInterrupt, ...) with a reply possibly still on its
                # way: the pipe is out of step, so this worker is dropped; the next call
                # starts a fresh one.
                self._discard(worker)
                raise
            finally:
                worker.end_call()
        status, rn, rdim, _ = _HEADER.unpack_from(buffer.data)
        if status == _STATUS_ERROR:
            return self._raise_remote(buffer[:received].tobytes())
        if status != _STATUS_OK or rn != n or rdim != dim or received != size:
            raise RuntimeError(
                f"isolated worker sent a malformed reply ({status:#x}, {rn}, {rdim})"
            )
        end = _HEADER.size + n * dim * 4
        vectors = buffer[_HEADER.size : end].view(np.float32).reshape(n, dim)
        counts = buffer[end:size].view(np.int32).tolist()
        return EncodeResult(vectors, counts)

    def _live_worker(self) -> _Worker:
        """The current worker, or a fresh one if the last died (caller holds _lock)."""
        worker = self._worker
        if worker is not None and worker.is_alive():
            return worker
        if worker is not None:
            self._finalizer.detach()
            worker.stop(0.0)
        self._worker = None
        if self._closed:  # a close() that gave up waiting for this call stopped the worker
            raise _stopped_by_close()
        fresh = _Worker(self.spec, self.load_timeout)
        self._worker = fresh
        self._finalizer = self._arm_finalizer(fresh)
        if self._closed:  # ... or did so while this one loaded: it must not outlive close()
            self._discard(fresh)
            raise _stopped_by_close()
        self.restarts += 1
        log.warning("isolated worker restarted (pid %s, restart %d)", fresh.pid, self.restarts)
        return fresh

    def _discard(self, worker: _Worker) -> None:
        """Kill and forget a worker whose pipe can no longer be trusted (caller holds _lock)."""
        self._finalizer.detach()
        worker.stop(1.0, kill=True)
        self._worker = None

    def _died(self, worker: _Worker) -> WorkerDiedError:
        """Reap the dead worker and describe its death (caller holds _lock)."""
        self._finalizer.detach()
        # The pipe reported EOF, so the worker is exiting: allow 2 s to reap it. If close()
        # got there first, it stops the worker and this is a no-op.
        worker.stop(2.0)
        self._worker = None
        if self._closed:
            return _stopped_by_close()
        message = (
            f"isolated worker {worker.pid} died during a call: "
            f"{_describe_exit(worker.exitcode)}; "
            "the call was not retried, the next call starts a new worker"
        )
        log.warning(message)
        return WorkerDiedError(message)

    @staticmethod
    def _raise_remote(frame: bytes) -> EncodeResult:
        exc = pickle.loads(frame[_HEADER.size :])
        if isinstance(exc, BaseException):
            raise exc
        raise RuntimeError(f"isolated worker failed: {exc!r}")

    # ---- closing ----------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker: all of the model's memory leaves with it. Idempotent.

        Waits up to `timeout` for a call in flight; after that the worker is killed
        under it (that call gets WorkerDiedError).
        """
        acquired = self._lock.acquire(timeout=timeout)
        _LIVE.discard(self)
        try:
            self._closed = True
            worker = self._worker
            if worker is None:
                return
            self._finalizer.detach()
            # Not acquired: a call is stuck, so the worker is killed under it (that call
            # then raises WorkerDiedError). If that call is already stopping the worker,
            # this is a no-op: exactly one thread stops it (`_Worker.stop`).
            worker.stop(timeout, kill=not acquired)
            self._worker = None
        finally:
            if acquired:
                self._lock.release()

    def __enter__(self) -> IsolatedRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"IsolatedRuntime(pid={self.pid}, alive={self.alive}, restarts={self.restarts})"


def _stop_helpers() -> None:
    """Stop and reap multiprocessing's fork server and resource tracker (private APIs,
    present in CPython 3.10-3.13; skipped if absent)."""
    from multiprocessing import forkserver, resource_tracker

    for holder in (
        getattr(forkserver, "_forkserver", None),  # first: it holds the tracker's fd
        getattr(resource_tracker, "_resource_tracker", None),
    ):
        stop = getattr(holder, "_stop", None)
        if stop is None:
            continue
        try:
            stop()
        except Exception as exc:  # never fail interpreter exit
            log.debug("could not stop %r: %s", holder, exc)


@atexit.register
def _at_exit() -> None:
    """Close live runtimes, then the helper processes nobody else needs (see module doc)."""
    for runtime in list(_LIVE):
        try:
            runtime.close(timeout=2.0)
        except Exception as exc:
            log.debug("closing %r at exit failed: %s", runtime, exc)
    if _CONTEXT is None or _CONTEXT.get_start_method() != "forkserver":
        return
    if multiprocessing.active_children():
        return  # the application's own processes may still use them
    _stop_helpers()


def load_isolated(spec: RuntimeSpec, *, load_timeout: float = 120.0) -> IsolatedRuntime:
    """Start a worker that loads `spec` (and warms it up); returns when it is ready.

    The lifecycle's loader for ``isolation = "process"``; raises ModelLoadError when the
    worker cannot load the model or dies while loading.
    """
    return IsolatedRuntime(spec, load_timeout=load_timeout)
