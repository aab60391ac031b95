"""Every process-wide change lazyembed makes to multiprocessing, in one place to audit.

Each function says what it changes, in which processes, and why. They reach into
CPython's private multiprocessing attributes (present in 3.10-3.13); each one does
nothing when an attribute it needs is missing. Nothing else in lazyembed touches
multiprocessing's internals.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from multiprocessing import forkserver, resource_tracker, spawn, util
from multiprocessing import process as mp_process
from multiprocessing.process import BaseProcess
from typing import Any

from lazyembed._fork import after_fork_in_child

__all__ = [
    "WORKER_NAME",
    "at_exit_of_multiprocessing_child",
    "forget_inherited_process",
    "fork_server_pid",
    "install_main_guard",
    "stop_helpers",
]

log = logging.getLogger("lazyembed")

#: The name of every isolated worker process; the main guard applies to this name only.
WORKER_NAME = "lazyembed-isolated-worker"


# ---- 1. the worker never re-runs the application's __main__ -----------------------------


def install_main_guard() -> None:
    """Drop the main-module keys from the preparation data of lazyembed's workers only.

    Changes: wraps ``multiprocessing.spawn.get_preparation_data`` for the whole process
    (once; idempotent). For a process named `WORKER_NAME` the keys
    ``init_main_from_path``/``init_main_from_name`` are removed; every other process is
    prepared exactly as before.

    Why: spawn and forkserver children re-import the parent's main script, so a script
    without an ``if __name__ == "__main__":`` guard would start itself again in each
    worker (and pay for its imports on every load). The worker needs nothing from it.
    """
    original = spawn.get_preparation_data
    if getattr(original, "_lazyembed_guard", False):
        return

    def get_preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        if name == WORKER_NAME:
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    get_preparation_data._lazyembed_guard = True  # type: ignore[attr-defined]
    spawn.get_preparation_data = get_preparation_data


# ---- 2. a forked child starts its own fork server ---------------------------------------


@after_fork_in_child
def _forget_parents_fork_server() -> None:
    """In a child of ``os.fork()`` (also multiprocessing's "fork" context): forget the
    parent's fork server, keep sharing its resource tracker.

    Changes, in the child only: the fork server's lock is new and, when the parent had
    started a fork server, the child's copy of its "alive" pipe is closed and its pid,
    address and pipe are forgotten, so the next worker start launches the child's own
    fork server (multiprocessing then starts one as in any fresh process). The resource
    tracker gets a new lock and forgets its pid; the child keeps using it (as
    multiprocessing's own children do), but never stops or reaps it.

    Why: multiprocessing does not expect a plain fork. The child would ``waitpid`` the
    parent's fork server, which is not its child (``ChildProcessError``), so no worker
    could start; it would hold the server's "alive" pipe open, so the parent could not
    stop it at exit while the child lives; and a lock held by another thread at fork
    time would stay held forever.
    """
    server = getattr(forkserver, "_forkserver", None)
    if server is not None and hasattr(server, "_forkserver_pid"):
        server._lock = threading.Lock()
        alive_fd = server._forkserver_alive_fd
        if server._forkserver_pid is not None:
            if alive_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(alive_fd)
            server._forkserver_pid = None
            server._forkserver_alive_fd = None
            server._forkserver_address = None
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    if tracker is not None and hasattr(tracker, "_pid"):
        tracker._lock = threading.RLock()
        tracker._pid = None


def forget_inherited_process(process: BaseProcess) -> None:
    """In a forked child: make multiprocessing forget a worker of the parent.

    Changes: removes ``process`` from ``multiprocessing.process._children`` and closes
    the child's copies of the fds its Popen's finalizer would close (the exit-status
    pipe and the parent-alive pipe), then cancels that finalizer; the parent's copies
    and the worker are untouched.

    Why: multiprocessing's exit hook in the child would otherwise SIGTERM every daemon
    process it lists as a child (the parent's workers: same pid, other parent) and then
    fail to join them, and ``active_children()`` would read exit statuses meant for the
    parent. Its Popen finalizer never runs in another process, so the fds would leak.
    """
    children = getattr(mp_process, "_children", None)
    if isinstance(children, set):
        children.discard(process)
    finalizer: Any = getattr(getattr(process, "_popen", None), "finalizer", None)
    still_active = getattr(finalizer, "still_active", None)
    if not callable(still_active) or not still_active():
        return  # the parent had closed them already: these fd numbers are not its
    for fd in getattr(finalizer, "_args", None) or ():  # the fds its ``close_fds`` closes
        if isinstance(fd, int):
            with contextlib.suppress(OSError):
                os.close(fd)
    finalizer.cancel()


# ---- 3. a multiprocessing child runs our exit hook too -----------------------------------


class _ExitHooks(list[Callable[[], None]]):
    """The callbacks; an object multiprocessing's after-fork registry can hold weakly."""


_CHILD_EXIT_HOOKS = _ExitHooks()


def at_exit_of_multiprocessing_child(callback: Callable[[], None]) -> Callable[[], None]:
    """Also run `callback` when a multiprocessing child (e.g. of the "fork" context) exits.

    Changes: registers, once, a ``multiprocessing.util.register_after_fork`` callback
    that, in every process multiprocessing starts, registers each such `callback` as a
    ``multiprocessing.util.Finalize`` (exit priority 10), which multiprocessing's exit
    function runs. Where atexit hooks also run, it runs twice: it must be idempotent.

    Why: a child of multiprocessing's "fork" context leaves with ``os._exit`` after
    multiprocessing's exit function and never runs atexit hooks (and it clears the
    finalizers inherited from the parent); without this, the workers and fork server
    it started would outlive it as orphans, for init to reap.
    """
    _CHILD_EXIT_HOOKS.append(callback)
    return callback


def _register_child_exit_hooks(hooks: _ExitHooks) -> None:
    for callback in hooks:
        util.Finalize(None, callback, exitpriority=10)


util.register_after_fork(_CHILD_EXIT_HOOKS, _register_child_exit_hooks)


# ---- 4. the helper processes do not outlive us ------------------------------------------


def fork_server_pid() -> int | None:
    """PID of multiprocessing's fork server, if this process started it."""
    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None


def stop_helpers(timeout: float = 2.0) -> None:
    """Stop and reap the fork server and resource tracker this process started.

    Changes: closes our end of each helper's "alive" pipe (which tells it to exit),
    reaps it, and clears multiprocessing's record of it, as their private ``_stop``
    methods do, but waiting at most ``timeout`` seconds each: a helper whose pipe is
    still held elsewhere (a forked child still running) is left to exit with the last
    holder instead of blocking our exit. A helper started by another process (we are a
    forked child) is not ours to stop.

    Why: otherwise they outlive the interpreter as orphans, which a container's PID 1
    may never reap. Call it only when no other multiprocessing child still needs them.
    """
    server = getattr(forkserver, "_forkserver", None)  # first: it holds the tracker's fd
    if server is not None and hasattr(server, "_forkserver_pid"):
        pid, fd = server._forkserver_pid, server._forkserver_alive_fd
        address = server._forkserver_address
        if pid is not None and fd is not None:
            server._forkserver_pid = server._forkserver_alive_fd = None
            server._forkserver_address = None
            _close_and_reap(fd, pid, timeout)
            if isinstance(address, str) and not util.is_abstract_socket_namespace(address):
                with contextlib.suppress(OSError):
                    os.unlink(address)
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    if tracker is not None and hasattr(tracker, "_pid"):
        pid, fd = tracker._pid, tracker._fd
        if pid is not None and fd is not None:
            tracker._pid = tracker._fd = None
            _close_and_reap(fd, pid, timeout)


def _close_and_reap(fd: int, pid: int, timeout: float) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return  # already reaped
        if done:
            return
        if time.monotonic() >= deadline:
            log.debug("helper process %s still running: another process holds its pipe", pid)
            return
        time.sleep(0.01)
