"""The watcher thread of a `Lifecycle`: sleeps until the next deadline, then acts.

One daemon thread per Lifecycle, started at its first load. It holds only a weak
reference to the Lifecycle, and a strong one only while deciding or acting, never while
sleeping, so an abandoned Lifecycle can be garbage-collected (the thread then exits).
It reads the Lifecycle's private state under the Lifecycle's own lock: the two modules
are one design, split only to keep each readable.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lazyembed.lifecycle import Lifecycle

log = logging.getLogger("lazyembed")

_INF = math.inf
_NEG_INF = -math.inf


class Shared:
    """What the watcher thread and the GC finalizer need, without a ref to the Lifecycle."""

    __slots__ = ("changed", "dead", "generation", "lock", "wake")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.wake = threading.Condition(self.lock)
        self.generation = 0  # a watcher whose generation differs exits
        self.dead = False  # the Lifecycle was garbage-collected


def on_collected(shared: Shared) -> None:
    """Finalizer: tell the watcher its Lifecycle is gone.

    Non-blocking: if the lock is held, its holder is the watcher itself dropping the
    last reference, and it checks ``dead`` before it sleeps.
    """
    shared.dead = True
    if shared.lock.acquire(blocking=False):
        try:
            shared.wake.notify_all()
        finally:
            shared.lock.release()


def watch(ref: weakref.ref[Lifecycle[Any]], shared: Shared, generation: int) -> None:
    """The watcher thread: sleep until the next deadline, act, repeat.

    Holds a strong reference to the Lifecycle only while deciding or acting, never while
    sleeping, so an abandoned Lifecycle can be collected (and this thread then exits).
    """
    try:
        while True:
            lifecycle = ref()
            if lifecycle is None or shared.generation != generation:
                return
            with lifecycle._lock:
                now = lifecycle._clock()
                action, reason = lifecycle._plan_locked(now)
                if action == "unload":
                    lifecycle._begin_unload_locked(reason)
                elif action == "wait":
                    until = lifecycle._wake_target()
                    lifecycle._watch_until = until
                    timeout = None if until == _INF else max(0.0, until - now)
                    wake = lifecycle._wake
                    del lifecycle  # may run the finalizer here (it then only sets dead)
                    if shared.dead or shared.generation != generation:
                        return
                    wake.wait(timeout)
                    lifecycle = ref()
                    if lifecycle is None:
                        return
                    lifecycle._watch_until = _NEG_INF
                    lifecycle._wakeups += 1
                    continue
            if action == "unload":
                lifecycle._finish_unload(reason)
            else:
                lifecycle._run_check()
            del lifecycle
    except Exception:  # pragma: no cover - a bug; the next load starts a new watcher
        log.exception("lazyembed lifecycle watcher died")
