"""The watcher thread of a lifecycle: sleeps until the next deadline, then acts.

One daemon thread per lifecycle, started at its first load. It knows the lifecycle only
through `Watched` (two methods, called under the shared lock) and the `Shared` state
below, so arrows point one way: lifecycle.py imports this module, never the reverse. It
holds only a weak reference to the lifecycle, and a strong one only while deciding or
acting, never while sleeping, so an abandoned lifecycle can be garbage-collected (the
thread then exits).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("lazyembed")

_INF = math.inf
_NEG_INF = -math.inf


class Shared:
    """What the watcher, its lifecycle and the GC finalizer share, without a ref to it.

    ``lock`` is the lifecycle's lock; every field is guarded by it (``dead`` is also set
    without it by the finalizer, which may not block).
    """

    __slots__ = ("changed", "dead", "generation", "lock", "wake", "wakeups", "watch_until")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.wake = threading.Condition(self.lock)
        self.generation = 0  # a watcher whose generation differs exits
        self.dead = False  # the lifecycle was garbage-collected
        self.watch_until = _NEG_INF  # what the watcher sleeps towards; -inf: not asleep
        self.wakeups = 0


class Watched(Protocol):
    """What the watcher drives: both methods are called with ``Shared.lock`` held."""

    def due(self) -> Callable[[], object] | None:
        """The work due now, begun under the lock and finished by calling the returned
        function outside it (an unload, a periodic check); None when nothing is due."""
        ...

    def wake_at(self) -> tuple[float, float]:
        """(when something next falls due, inf = nothing until woken; now)."""
        ...


def on_collected(shared: Shared) -> None:
    """Finalizer: tell the watcher its lifecycle is gone.

    Non-blocking: if the lock is held, its holder is the watcher itself dropping the
    last reference, and it checks ``dead`` before it sleeps.
    """
    shared.dead = True
    if shared.lock.acquire(blocking=False):
        try:
            shared.wake.notify_all()
        finally:
            shared.lock.release()


def watch(ref: Callable[[], Watched | None], shared: Shared, generation: int) -> None:
    """The watcher thread: sleep until the next deadline, act, repeat.

    ``ref`` is a weak reference to the lifecycle: a strong one is held only while
    deciding or acting, never while sleeping, so an abandoned lifecycle can be collected
    (and this thread then exits). A caller that moves the next deadline earlier than
    ``shared.watch_until`` notifies ``shared.wake``.
    """
    try:
        while True:
            target = ref()
            if target is None or shared.generation != generation:
                return
            with shared.lock:
                work = target.due()
                if work is None:
                    until, now = target.wake_at()
                    shared.watch_until = until
                    timeout = None if until == _INF else max(0.0, until - now)
                    del target  # may run the finalizer here (it then only sets dead)
                    if shared.dead or shared.generation != generation:
                        return
                    shared.wake.wait(timeout)
                    shared.watch_until = _NEG_INF
                    shared.wakeups += 1
                    continue
            del target
            work()  # holds the lifecycle only while it runs
            del work
    except Exception:  # pragma: no cover - a bug; the next load starts a new watcher
        log.exception("lazyembed lifecycle watcher died")
