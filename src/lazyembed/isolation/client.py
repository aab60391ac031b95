"""`IsolatedRuntime`: the model in a worker process, with the in-process runtime's interface.

The lifecycle drives it as any runtime (`encode`, `close`): unload = close() = the worker
exits, and every byte of the model leaves with it. The class doc says what each failure
(death, no answer, fork, use after close) does.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import multiprocessing
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import psutil

from lazyembed._fork import after_fork_in_child
from lazyembed.config.settings import Settings
from lazyembed.errors import (
    ClosedError,
    ConfigError,
    UnsupportedModelError,
    WorkerDiedError,
    WorkerTimeoutError,
)
from lazyembed.isolation import _multiprocessing_workarounds as workarounds
from lazyembed.isolation.process import WorkerProcess, describe_exit, uses_fork_server
from lazyembed.isolation.protocol import (
    encode_request,
    parse_reply,
    remote_error,
    reply_buffer,
    reply_problem,
)
from lazyembed.memory import MB
from lazyembed.runtime import EncodeResult, RuntimeSpec

__all__ = [
    "CALL_TIMEOUT",
    "LOAD_TIMEOUT",
    "PER_TEXT_TIMEOUT",
    "IsolatedRuntime",
    "load_isolated",
]

log = logging.getLogger("lazyembed")

#: Seconds a worker may take to load the model and answer READY.
LOAD_TIMEOUT = 120.0
#: Seconds every call may wait for its reply on top of `PER_TEXT_TIMEOUT` per text, and
#: the longest a read or write on the pipe may make no progress.
CALL_TIMEOUT = Settings.worker_call_timeout  # the setting's default, defined once
#: Extra seconds a call may wait per text (texts are truncated, so each costs at most
#: one full-length sequence).
PER_TEXT_TIMEOUT = 1.0

#: Every runtime not yet closed, for the exit hook and the fork reset (only iterated
#: over a copy).
_LIVE: weakref.WeakSet[IsolatedRuntime] = weakref.WeakSet()


def _stopped_by_close() -> WorkerDiedError:
    return WorkerDiedError("the isolated worker was stopped by close() during a call")


def _closed_error() -> ClosedError:
    return ClosedError("IsolatedRuntime.encode() after close()")


def _seconds(value: float, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"invalid {key}={value!r} from argument: expected seconds > 0")
    return float(value)


def _process_state(pid: int) -> str:
    """What the OS says the worker is doing ("stopped", "sleeping", ...), for messages."""
    try:
        return str(psutil.Process(pid).status())
    except (psutil.Error, OSError):
        return "gone"


class IsolatedRuntime:
    """A model in a worker process, with the in-process runtime's `encode` and `close`.

    * Worker death (OOM killer, SIGKILL): the call in flight raises `WorkerDiedError`
      naming the exit code or signal. It is not retried (the call may be what killed
      the worker). The runtime is then not `alive`; the next `encode` starts a fresh
      worker by itself (counted in `restarts`).
    * No answer in time (worker stopped or hung): a call may wait
      ``call_timeout + per_text_timeout * len(texts)`` seconds for its reply, and no
      read or write on the pipe may stall longer than ``call_timeout``; past either,
      the worker is killed and the call raises `WorkerTimeoutError` (a
      `WorkerDiedError`); the next call starts a new worker. ``math.inf`` turns the
      limits off; both are plain attributes, a change applies from the next call.
    * Fork: in a child of ``os.fork()`` an inherited runtime forgets the parent's
      worker without touching it; its next call starts the child's own worker (from
      the child's own fork server), and the parent's worker keeps serving the parent.
    * Use after close(): `ClosedError`.

    Thread safety: one call at a time over the pipe. ``_lock`` guards the pipe, the
    worker handle and restarts; concurrent `encode` calls queue on it. close() may stop
    a worker without ``_lock`` when a call is stuck; `WorkerProcess.stop` makes that
    safe.

    No zombies: close() asks the worker to quit, joins with a timeout, then terminates
    and kills. A `weakref.finalize` closes a runtime dropped without close(); at exit a
    hook closes every live runtime, then stops the fork server and resource tracker
    unless other multiprocessing children still need them.
    """

    def __init__(
        self,
        spec: RuntimeSpec,
        *,
        load_timeout: float = LOAD_TIMEOUT,
        call_timeout: float = CALL_TIMEOUT,
        per_text_timeout: float = PER_TEXT_TIMEOUT,
    ) -> None:
        self.spec = spec
        self.load_timeout = _seconds(load_timeout, "load_timeout")
        self.call_timeout = _seconds(call_timeout, "call_timeout")
        self.per_text_timeout = _seconds(per_text_timeout, "per_text_timeout")
        #: Workers started after a death or a timeout (the first one is not counted).
        self.restarts = 0
        self._lock = threading.Lock()  # guards _worker, _closed, _lost, restarts, the pipe
        self._closed = False
        self._lost = False  # the last worker died or was killed: the next start is a restart
        self._worker: WorkerProcess | None = self._start_worker()
        self._finalizer = self._arm_finalizer(self._worker)
        _LIVE.add(self)

    def _start_worker(self) -> WorkerProcess:
        return WorkerProcess(self.spec, self.load_timeout, self.call_timeout)

    def _arm_finalizer(self, worker: WorkerProcess) -> weakref.finalize[Any, Any]:
        return weakref.finalize(self, worker.stop, 5.0)

    def call_deadline(self, n: int) -> float:
        """Seconds a call of `n` texts may wait for its reply."""
        return self.call_timeout + n * self.per_text_timeout

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
        server = workarounds.fork_server_pid()
        if server is not None:
            report["fork_server_pid"] = server
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(server).memory_info().rss
                report["fork_server_rss_mb"] = round(rss / MB, 1)
        report["worker_restarts"] = self.restarts
        return report

    # ---- calls ------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], *, prompt_length: int = 0) -> EncodeResult:
        """Embed in the worker; see the class doc for deaths, timeouts and fork."""
        if prompt_length:
            raise UnsupportedModelError(
                "a model whose pooling leaves out its prompt (include_prompt: false) cannot "
                "take a prompt with isolation='process' yet; use isolation='none'"
            )
        items = list(texts)
        n, dim = len(items), self.spec.dimension
        if not n:  # nothing for the worker to do: answer as the in-process runtime
            if self._closed:
                raise _closed_error()
            return EncodeResult(np.empty((0, dim), dtype=np.float32), [])
        request = encode_request(items)
        buffer = reply_buffer(n, dim)
        with self._lock:
            if self._closed:
                raise _closed_error()
            worker = self._live_worker()
            if not worker.begin_call(self.call_timeout):  # close() gave up waiting on it
                raise self._died(worker)
            try:
                received = self._exchange(worker, request, buffer, self.call_deadline(n))
            finally:
                worker.end_call()
            problem = reply_problem(buffer, received, n, dim)
            if problem is not None:  # the pipe is out of step: never trust this worker again
                self._discard(worker)
                raise WorkerDiedError(f"{problem}; the worker was dropped")
        return parse_reply(buffer, received, n, dim)

    def _exchange(
        self, worker: WorkerProcess, request: bytes, buffer: np.ndarray, seconds: float
    ) -> int:
        """Send `request`, read the reply into `buffer` (caller holds _lock, in a call).

        Returns the reply's length; raises what the worker raised, `WorkerDiedError`
        when it died, `WorkerTimeoutError` (after killing it) when it did not answer.
        """
        conn = worker.conn
        try:
            conn.send_bytes(request)
            if conn.poll(None if math.isinf(seconds) else seconds):
                return conn.recv_bytes_into(buffer)
        except multiprocessing.BufferTooShort as exc:  # an error reply, longer
            raise remote_error(exc.args[0]) from None
        except BlockingIOError:  # a read or write made no progress for call_timeout
            seconds = worker.stall_timeout
        except (EOFError, OSError) as exc:
            raise self._died(worker) from exc
        except BaseException:
            # Interrupted (KeyboardInterrupt, ...) with a reply possibly still on its way:
            # the pipe is out of step, so this worker is dropped; the next call starts a
            # fresh one.
            self._discard(worker)
            raise
        raise self._timed_out(worker, seconds)

    def _live_worker(self) -> WorkerProcess:
        """The current worker, or a fresh one if there is none (caller holds _lock)."""
        worker = self._worker
        if worker is not None and worker.is_alive():
            return worker
        if worker is not None:  # died while idle
            self._finalizer.detach()
            worker.stop(0.0)
            self._lost = True
        self._worker = None
        if self._closed:  # a close() that gave up waiting for this call stopped the worker
            raise _stopped_by_close()
        fresh = self._start_worker()
        self._worker = fresh
        self._finalizer = self._arm_finalizer(fresh)
        if self._closed:  # ... or did so while this one loaded: it must not outlive close()
            self._discard(fresh)
            raise _stopped_by_close()
        if self._lost:
            self.restarts += 1
            log.warning("isolated worker restarted (pid %s, restart %d)", fresh.pid, self.restarts)
        else:
            log.info("isolated worker %s started for a forked child", fresh.pid)
        self._lost = False
        return fresh

    def _discard(self, worker: WorkerProcess) -> None:
        """Kill and forget a worker whose pipe can no longer be trusted (caller holds _lock)."""
        self._finalizer.detach()
        worker.stop(1.0, kill=True)
        self._worker = None
        self._lost = True

    def _died(self, worker: WorkerProcess) -> WorkerDiedError:
        """Reap the dead worker and describe its death (caller holds _lock)."""
        self._finalizer.detach()
        # The pipe reported EOF, so the worker is exiting: allow 2 s to reap it. If close()
        # got there first, it stops the worker and this is a no-op.
        worker.stop(2.0)
        self._worker = None
        self._lost = True
        if self._closed:
            return _stopped_by_close()
        message = (
            f"isolated worker {worker.pid} died during a call: "
            f"{describe_exit(worker.exitcode)}; "
            "the call was not retried, the next call starts a new worker"
        )
        log.warning(message)
        return WorkerDiedError(message)

    def _timed_out(self, worker: WorkerProcess, seconds: float) -> WorkerDiedError:
        """Kill a worker that did not answer in time and describe it (caller holds _lock)."""
        state = _process_state(worker.pid)
        self._discard(worker)  # SIGKILL ends a stopped process too
        if self._closed:
            return _stopped_by_close()
        message = (
            f"isolated worker {worker.pid} did not answer within {seconds:g} s "
            f"(it was {state}); it was killed, the call was not retried, "
            "the next call starts a new worker"
        )
        log.warning(message)
        return WorkerTimeoutError(message)

    # ---- fork -------------------------------------------------------------------------

    def _reset_after_fork(self) -> None:
        """In a forked child: forget the parent's worker; the next call starts our own."""
        self._lock = threading.Lock()
        self._finalizer.detach()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.abandon_in_child()
        self._lost = False

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
            # this is a no-op: exactly one thread stops it (`WorkerProcess.stop`).
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


@after_fork_in_child
def _after_fork_in_child() -> None:
    for runtime in list(_LIVE):
        runtime._reset_after_fork()


@atexit.register
@workarounds.at_exit_of_multiprocessing_child
def _at_exit() -> None:
    """Close live runtimes, then the helper processes nobody else needs."""
    for runtime in list(_LIVE):
        try:
            runtime.close(timeout=2.0)
        except Exception as exc:
            log.debug("closing %r at exit failed: %s", runtime, exc)
    if not uses_fork_server():
        return
    if multiprocessing.active_children():
        return  # the application's own processes may still use them
    workarounds.stop_helpers()


def load_isolated(
    spec: RuntimeSpec,
    *,
    load_timeout: float = LOAD_TIMEOUT,
    call_timeout: float = CALL_TIMEOUT,
    per_text_timeout: float = PER_TEXT_TIMEOUT,
) -> IsolatedRuntime:
    """Start a worker that loads `spec` (and warms it up); returns when it is ready.

    The lifecycle's loader for ``isolation = "process"``; raises ModelLoadError when the
    worker cannot load the model or dies while loading.
    """
    return IsolatedRuntime(
        spec,
        load_timeout=load_timeout,
        call_timeout=call_timeout,
        per_text_timeout=per_text_timeout,
    )
