"""One call through a `Lifecycle`: counted in flight, and the lease it leaves behind.

`Lifecycle.acquire()` returns a `Call`, a tiny context manager (no generator, no per-call
state, so one instance serves every call with the default keep-alive). Its fast paths
run on every call — one lock round trip each way and one clock read at release — and
the release is where the lease rule lives: the default lease, an explicit one, or a pin;
and when every lease has already expired, the unload runs before the call returns. It
works on its Lifecycle's private state under that Lifecycle's lock: the two modules are
one design, split to keep each readable (docs/ARCHITECTURE.md, "The lifecycle").
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from lazyembed.report import State

if TYPE_CHECKING:
    from lazyembed.lifecycle import Lifecycle


class Closeable(Protocol):
    """What a Lifecycle holds: anything that can be closed."""

    def close(self) -> None: ...


T = TypeVar("T", bound=Closeable)
_INF = math.inf
_LOADED = State.LOADED  # a module global: cheaper to read on the fast path


class Call(Generic[T]):
    """The context manager `Lifecycle.acquire()` returns (see the module docstring)."""

    __slots__ = ("_keep_alive", "_lifecycle")

    def __init__(self, lifecycle: Lifecycle[T], keep_alive: float | None) -> None:
        # Private encoding, inside the lifecycle only: None = the default lease,
        # inf = a pin, else seconds (from the KeepAlive that acquire() was given).
        self._lifecycle = lifecycle
        self._keep_alive = keep_alive

    def __enter__(self) -> T:
        lc = self._lifecycle
        with lc._lock:
            if lc._state is _LOADED and not lc._unload_waiting:
                lc._in_flight += 1
                return lc._obj  # type: ignore[return-value]
        return lc._enter_slow()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lc = self._lifecycle
        keep_alive = self._keep_alive
        now = lc._clock()
        with lc._lock:
            lc._in_flight -= 1
            lc._last_done = now
            if keep_alive is None:
                lc._default_done = now
            elif keep_alive == _INF:
                lc._pinned = True
            else:
                lease = now + keep_alive
                if lease > lc._explicit_until:
                    lc._explicit_until = lease
            if lc._in_flight:
                return
            if lc._unload_waiting:
                lc._changed.notify_all()
                return
            reason = ""
            # Only a lease of zero (keep_alive=0, or the default under idle_timeout 0) can
            # have expired already; then, if no other lease holds, unload before the call
            # returns, so the caller never sees it still loaded. (Checked only then: the
            # deadline's computation is not free, and this runs on every call.)
            zero = keep_alive == 0.0 or (keep_alive is None and lc._idle_timeout == 0.0)
            if zero and lc._state is _LOADED and lc._deadline()[0] <= now:
                reason = lc._deadline()[1]
                lc._begin_unload_locked(reason)
            elif lc._watch_until == _INF and lc._wake_target() < _INF:
                # Leases only grow, so a watcher asleep towards a finite time is never
                # late; one asleep without timeout (it planned while calls were in
                # flight, or there was no deadline) must re-plan.
                lc._wake.notify()
        if reason:
            lc._finish_unload(reason)  # tells on_idle when done
            return
        if lc._rss_before_load is not None:
            lc._measure_first_call()
        if lc._on_idle is not None:
            lc._notify_idle()
