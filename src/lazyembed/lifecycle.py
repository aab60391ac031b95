"""The lifecycle of one loaded thing: load on first use, unload when idle, never mid-call.

States UNLOADED → LOADING → LOADED → UNLOADING → UNLOADED. It holds whatever
``loader()`` returns (anything with ``close()``) and knows nothing of ONNX, so it is
testable with a fake loader and a fake clock (tests/test_lifecycle.py is its
specification). ``with lifecycle.acquire(keep_alive) as thing:`` is the only way in
(`lease()` records a cache hit's keep-alive without it); loads are single-flight,
unloads happen only at zero calls in flight, and the lease rule is lease.py's. The
watcher thread (watcher.py) drives it through `due()` and `wake_at()` only.
docs/ARCHITECTURE.md ("The lifecycle") describes the states, the lease rule, the
watcher, fork handling and who holds which lock.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from lazyembed import memory
from lazyembed._fork import after_fork_in_child
from lazyembed.config.durations import KeepAlive
from lazyembed.config.settings import DEFAULT_IDLE_TIMEOUT
from lazyembed.errors import ClosedError, ConfigError, LazyEmbedError, ModelLoadError
from lazyembed.journal import Journal
from lazyembed.lease import Leases
from lazyembed.report import LifecycleStatus, State
from lazyembed.watcher import Shared, on_collected, watch

log = logging.getLogger("lazyembed")

_INF = math.inf


class Closeable(Protocol):
    """What a Lifecycle holds: anything that can be closed."""

    def close(self) -> None: ...


T = TypeVar("T", bound=Closeable)
_LOADED = State.LOADED  # a module global: cheaper to read on the fast path

# Objects loaded in a parent process before fork(): never closed or freed in the child.
_INHERITED: list[object] = []
_LIVE: weakref.WeakSet[Lifecycle[Any]] = weakref.WeakSet()


@after_fork_in_child
def _after_fork_in_child() -> None:
    for lifecycle in list(_LIVE):
        lifecycle._reset_after_fork()


def _idle_seconds(idle_timeout: KeepAlive) -> float | None:
    """The private form of an idle timeout: seconds, or None for never."""
    if idle_timeout.is_default:
        raise ConfigError("idle_timeout cannot be 'default'; give a duration or 'never'")
    return None if idle_timeout.is_forever else idle_timeout.seconds


class _Attempt:
    """One load; waiters keep a reference to learn its outcome (single flight)."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None


class Call(Generic[T]):
    """What `Lifecycle.acquire()` returns: counts one call in flight, then leaves its lease.

    A tiny context manager (no generator, no per-call state, so one instance serves every
    call with the default keep-alive). Its fast paths run on every call — one lock round
    trip each way and one clock read at release. It works on its Lifecycle's state under
    that Lifecycle's lock: the two are one design (why it lives in this module).
    """

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
                lc._leases.default_done = now  # Leases.record's default branch, inlined
                # Only under idle_timeout 0 can the renewed default lease end at once.
                settle = lc._idle_timeout == 0.0
            else:
                lc._leases.record(keep_alive, now)
                # It may end now (a 0), or before the default lease it replaced.
                settle = True
            if lc._in_flight:
                return
            if lc._unload_waiting:
                lc._changed.notify_all()
                return
            reason = ""
            # A default lease only ever moves later, so a watcher asleep towards a finite
            # time is never late; one asleep without timeout (it planned while calls were
            # in flight, or there was no deadline) must re-plan. Checked only then: the
            # deadline's computation is not free, and this runs on every call.
            if settle or lc._shared.watch_until == _INF:
                reason = lc._settle_locked(now)
        if reason:
            lc._finish_unload(reason)  # before the call returns; tells on_idle when done
            return
        if lc._rss_before_load is not None:
            lc._measure_first_call()
        if lc._on_idle is not None:
            lc._notify_idle()


class Lifecycle(Generic[T]):
    """Loads ``loader()`` on first use, unloads it when idle; see the module docstring."""

    def __init__(
        self,
        loader: Callable[[], T],
        *,
        idle_timeout: KeepAlive = DEFAULT_IDLE_TIMEOUT,
        max_events: int = 64,
        clock: Callable[[], float] = time.monotonic,
        memory_probe: Callable[[], int] = memory.process_rss_bytes,
        release_memory: Callable[[], object] = memory.release_to_os,
        watcher: bool = True,
        periodic_check: Callable[[], str | None] | None = None,
        check_interval: float = 5.0,
        name: str = "model",
        on_idle: Callable[[], object] | None = None,
        admit: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
    ) -> None:
        if periodic_check is not None and not check_interval > 0:
            raise ConfigError(f"invalid check_interval={check_interval!r} from argument")
        self._loader = loader
        self._clock = clock
        self._probe = memory_probe
        self._release_memory = release_memory
        self._use_watcher = watcher
        self._check = periodic_check
        self._check_interval = float(check_interval)
        self.name = name
        # Told (outside the lock) when calls in flight reach 0 and after every unload:
        # a registry waiting for room to load another model listens here.
        self._on_idle = on_idle
        # Entered around every load, before its memory is measured: a registry's budget
        # gate, which may wait for room or unload other models first.
        self._admit = admit

        self._shared = Shared()
        self._lock = self._shared.lock
        self._changed = self._shared.changed
        self._wake = self._shared.wake
        # Everything below is guarded by _lock.
        self._state = State.UNLOADED
        self._obj: T | None = None
        self._dying: T | None = None  # the object being unloaded (UNLOADING only)
        self._in_flight = 0
        self._unload_waiting = 0  # unload() calls waiting; new callers queue behind them
        self._waiting = 0  # callers waiting for a load or an unload to finish
        self._attempt: _Attempt | None = None
        self._idle_timeout = _idle_seconds(idle_timeout)  # None = never
        self._last_done: float | None = None  # any call (for idle_seconds)
        self._leases = Leases()  # lease.py: the rule of what holds the model
        self._closed = False  # close() was called: acquire() raises ClosedError
        self._next_check = _INF
        self._watcher_thread: threading.Thread | None = None
        self._model_mb = 0.0
        # RSS before the current load, until the first call after it has run: a load
        # maps the weights without touching them, so what the model takes shows after
        # its first inference (`_measure_first_call`).
        self._rss_before_load: int | None = None
        self._journal = Journal(max_events)

        self._default_call: Call[T] = Call(self, None)
        _LIVE.add(self)
        weakref.finalize(self, on_collected, self._shared)

    # ---- using the thing ---------------------------------------------------------------

    def acquire(self, keep_alive: KeepAlive = KeepAlive.DEFAULT) -> Call[T]:
        """Context manager yielding the loaded thing; see the keep-alive rule above."""
        kind = keep_alive.kind
        if kind == "default":
            return self._default_call
        return Call(self, _INF if kind == "forever" else keep_alive.seconds)

    def _enter_slow(self) -> T:
        joined: _Attempt | None = None
        with self._lock:
            while True:
                state = self._state
                if joined is not None and joined.done:
                    # Counted in flight since joining, so nothing unloaded it meanwhile.
                    if joined.error is not None:
                        self._in_flight -= 1
                        if not self._in_flight and self._unload_waiting:
                            self._changed.notify_all()
                        raise joined.error
                    return self._obj  # type: ignore[return-value]
                if joined is None and self._closed:
                    raise ClosedError(f"{self.name}: used after close()")
                if not self._unload_waiting:
                    if state is State.LOADED:
                        self._in_flight += 1
                        return self._obj  # type: ignore[return-value]
                    if state is State.UNLOADED:
                        attempt = self._attempt = _Attempt()
                        self._state = State.LOADING
                        self._in_flight += 1
                        reason = "reload" if self._journal.loads else "first_use"
                        break
                    if state is State.LOADING and joined is None:
                        joined = self._attempt  # single flight: wait for this load
                        self._in_flight += 1  # committed: no unload may pass us by
                self._waiting += 1
                try:
                    self._changed.wait()
                except BaseException:  # interrupted while waiting: give the slot back
                    if joined is not None:
                        self._in_flight -= 1
                        self._changed.notify_all()
                        if not self._in_flight:
                            self._wake.notify()  # the watcher may have a deadline now
                    raise
                finally:
                    self._waiting -= 1
        return self._load(attempt, reason)

    # ---- loading and unloading (outside the lock) --------------------------------------

    def _measure(self) -> int | None:
        """Process RSS from the probe, or None if it failed (a figure is not worth a hang)."""
        try:
            return self._probe()
        except Exception:
            log.warning("%s: memory probe failed", self.name, exc_info=True)
            return None

    def _load(self, attempt: _Attempt, reason: str) -> T:
        with contextlib.ExitStack() as admission:
            start = time.perf_counter()
            try:
                if self._admit is not None:  # may unload others first: measure after it
                    admission.enter_context(self._admit())
                before = self._measure()
                start = time.perf_counter()
                obj = self._loader()
                if obj is None:
                    raise ModelLoadError("the loader returned None")
            except BaseException as exc:
                self._load_failed(attempt, reason, exc, (time.perf_counter() - start) * 1e3)
                error = attempt.error
                if error is exc or error is None or not isinstance(exc, Exception):
                    raise
                raise error from exc
            ms = (time.perf_counter() - start) * 1e3
            after = self._measure()
        mb = 0.0 if before is None or after is None else max(0.0, (after - before) / memory.MB)
        new_watcher: threading.Thread | None = None
        with self._lock:
            self._obj = obj
            self._state = State.LOADED
            attempt.done = True
            self._model_mb = mb
            self._rss_before_load = before
            if self._check is not None:
                self._next_check = self._clock() + self._check_interval
            self._journal.loaded(reason, ms, mb)
            self._changed.notify_all()
            if self._use_watcher and (
                self._watcher_thread is None or not self._watcher_thread.is_alive()
            ):
                new_watcher = self._watcher_thread = self._new_watcher()
        if new_watcher is not None:
            new_watcher.start()
        log.info("%s loaded (%s) in %.0f ms, +%.1f MB RSS", self.name, reason, ms, mb)
        return obj

    def _load_failed(self, attempt: _Attempt, reason: str, exc: BaseException, ms: float) -> None:
        if isinstance(exc, LazyEmbedError):
            error: BaseException = exc
        elif isinstance(exc, Exception):
            error = ModelLoadError(f"loading {self.name} failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
        else:  # KeyboardInterrupt & co: the loading caller gets it, waiters a ModelLoadError
            error = ModelLoadError(f"loading {self.name} was interrupted ({type(exc).__name__})")
        with self._lock:
            attempt.error = error
            attempt.done = True
            self._state = State.UNLOADED
            self._leases.clear()  # any recorded while it loaded: nothing left to hold
            self._in_flight -= 1
            self._journal.load_failed(reason, ms, error)
            self._changed.notify_all()
        log.warning("%s failed to load in %.0f ms: %s", self.name, ms, error)

    def _begin_unload_locked(self, reason: str) -> None:
        """Under _lock, at in_flight == 0 and LOADED: take the object out, clear leases."""
        self._dying = self._obj
        self._obj = None
        self._state = State.UNLOADING
        self._rss_before_load = None
        self._leases.clear()
        self._next_check = _INF

    def _finish_unload(self, reason: str, note: str | None = None) -> str:
        """Outside the lock: close, drop the last reference, return memory, measure.
        Returns ``reason`` (so the watcher and poll() can run it as the work due).

        Whatever close(), the memory release or the probe raise (or an interrupt), the
        state still reaches UNLOADED and waiters are woken: nobody hangs on UNLOADING.
        """
        before = self._measure()
        start = time.perf_counter()
        after: int | None = None
        with self._lock:
            obj, self._dying = self._dying, None
        try:
            try:
                if obj is not None:
                    obj.close()
            except Exception:
                log.exception("%s: close() failed during unload (%s)", self.name, reason)
            del obj  # the last reference: the loaded thing is freed here
            try:
                self._release_memory()
            except Exception:
                log.exception("%s: returning memory failed during unload", self.name)
            after = self._measure()
        finally:
            ms = (time.perf_counter() - start) * 1e3
            with self._lock:
                self._state = State.UNLOADED
                self._model_mb = 0.0
                record = self._journal.unloaded(reason, ms, before, after, note)
                self._changed.notify_all()
                self._wake.notify()  # let the watcher settle into its untimed sleep now
        if self._on_idle is not None:
            self._notify_idle()
        log.info(
            "%s unloaded (%s) in %.0f ms, %.1f MB returned (RSS %s → %s MB)",
            self.name,
            reason,
            ms,
            record["returned_mb"],
            record["rss_before_mb"],
            record["rss_after_mb"],
        )
        return reason

    def _measure_first_call(self) -> None:
        """After the first call since a load: model_mb = RSS now - RSS before the load."""
        now = self._measure()
        with self._lock:
            before, self._rss_before_load = self._rss_before_load, None
            if now is not None and before is not None and self._state is State.LOADED:
                self._model_mb = max(self._model_mb, (now - before) / memory.MB)

    def _notify_idle(self) -> None:
        assert self._on_idle is not None
        try:
            self._on_idle()
        except Exception:
            log.exception("%s: on_idle listener failed", self.name)

    # ---- public control ----------------------------------------------------------------

    def unload(self, reason: str = "explicit") -> bool:
        """Unload now; True if a model was unloaded, False if none was loaded.

        Waits for calls in flight (and a load in progress) to finish; callers arriving
        meanwhile queue behind the unload and then load again. Clears all leases (pins).
        """
        with self._lock:
            self._unload_waiting += 1
            try:
                while self._state in (State.LOADING, State.UNLOADING) or self._in_flight:
                    self._changed.wait()
            finally:
                self._unload_waiting -= 1
                if not self._unload_waiting:
                    # Release callers queued behind us (also when we were interrupted).
                    self._changed.notify_all()
            if self._state is not State.LOADED:
                return False
            self._begin_unload_locked(reason)
        self._finish_unload(reason)
        return True

    def try_unload(self, reason: str, *, allow_pinned: bool = False) -> bool:
        """Unload now if nothing is in flight or waiting (and, unless allowed, no pin).

        Never waits: False when the model is busy, pinned, loading or not loaded. A
        registry making room for another model calls this on its least recent idle one.
        """
        with self._lock:
            if (
                self._state is not State.LOADED
                or self._in_flight
                or self._unload_waiting
                or (self._leases.pinned and not allow_pinned)
            ):
                return False
            pinned = self._leases.pinned
            self._begin_unload_locked(reason)
        if pinned:
            log.warning(
                "%s: unloading a pinned model (%s): nothing else could make room", self.name, reason
            )
        self._finish_unload(reason, note="was pinned" if pinned else None)
        return True

    @property
    def last_used(self) -> float | None:
        """When the last call finished (the lifecycle's clock), None before any call."""
        return self._last_done

    @property
    def pinned(self) -> bool:
        return self._leases.pinned

    @property
    def busy(self) -> bool:
        """Calls in flight or waiting, or a transition under way: not to be unloaded now."""
        return bool(self._in_flight or self._waiting or self._unload_waiting) or (
            self._state in (State.LOADING, State.UNLOADING)
        )

    def set_idle_timeout(self, idle_timeout: KeepAlive) -> None:
        """Seconds (0 = unload after each call) or FOREVER (never). Applies at once."""
        value = _idle_seconds(idle_timeout)
        with self._lock:
            self._idle_timeout = value
            self._wake.notify()

    def peek(self) -> T | None:
        """The loaded thing if LOADED, else None, without loading or touching leases.

        For reports only (e.g. a worker's memory): it may be unloaded and closed right
        after this returns, so never use it for work — that is what acquire() is for.
        """
        with self._lock:
            return self._obj if self._state is _LOADED else None

    @property
    def idle_timeout(self) -> KeepAlive:
        seconds = self._idle_timeout
        return KeepAlive.FOREVER if seconds is None else KeepAlive.after(seconds)

    @property
    def is_loaded(self) -> bool:
        """Cheap (one attribute read, no lock): LOADED now. UNLOADING is not loaded."""
        return self._state is _LOADED

    @property
    def state(self) -> State:
        return self._state

    def poll(self) -> str | None:
        """Run the deadline and periodic checks now; the reason if it unloaded, else None.

        What the watcher does when it wakes (`due`); tests with a fake clock call it.
        """
        with self._lock:
            work = self.due()
        return None if work is None else work()

    def lease(self, keep_alive: KeepAlive) -> None:
        """Record the lease a call asks for without using the thing: a cache hit's.

        Never loads. An explicit keep-alive or a pin is recorded exactly as when a call
        finishes (so a 0 that leaves no other lease live unloads before this returns); a
        default one records nothing: the thing was not used, so its idle countdown does
        not restart. Nothing either unless loaded or loading (an unloaded model has no
        lease to keep; the next load's own call leaves one).
        """
        kind = keep_alive.kind
        if kind == "default":
            return
        seconds = _INF if kind == "forever" else keep_alive.seconds
        now = self._clock()
        with self._lock:
            if self._state is not _LOADED and self._state is not State.LOADING:
                return
            self._leases.record(seconds, now)
            if self._in_flight or self._unload_waiting:
                return  # the last call out (or the unload) settles it
            reason = self._settle_locked(now)
        if reason:
            self._finish_unload(reason)

    def close(self) -> None:
        """Stop the watcher and unload; afterwards acquire() raises `ClosedError`.

        Idempotent. The watcher stops first; calls already in flight finish (the unload
        waits for them), and a call queued behind the unload gets ClosedError.
        """
        with self._lock:
            self._closed = True
            self._shared.generation += 1
            thread, self._watcher_thread = self._watcher_thread, None
            self._wake.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self.unload("explicit")

    def status(self, *, events: bool = True) -> LifecycleStatus:
        """A consistent snapshot: state, memory, leases, counters, recent events."""
        with self._lock:
            journal = self._journal
            now = self._clock()
            loaded = self._state is State.LOADED
            unload_in: float | None = None
            if loaded and not self._in_flight:
                deadline, _ = self._deadline()
                if deadline != _INF:
                    unload_in = max(0.0, deadline - now)
            idle: float | None = None
            if self._last_done is not None:
                idle = 0.0 if self._in_flight else max(0.0, now - self._last_done)
            return LifecycleStatus(
                state=self._state,
                model_mb=round(self._model_mb, 2) if loaded else 0.0,
                idle_seconds=idle,
                idle_timeout=self.idle_timeout,
                unload_in_s=unload_in,
                pinned=self._leases.pinned,
                in_flight=self._in_flight,
                waiting=self._waiting,
                unload_waiting=self._unload_waiting,
                loads=journal.loads,
                unloads=journal.unloads,
                load_failures=journal.load_failures,
                loads_by_reason=dict(journal.by_reason["load"]),
                unloads_by_reason=dict(journal.by_reason["unload"]),
                last_load_ms=None
                if journal.last_load_ms is None
                else round(journal.last_load_ms, 2),
                last_unload=None if journal.last_unload is None else dict(journal.last_unload),
                watcher_wakeups=self._shared.wakeups,
                events=tuple(dict(e) for e in journal.events) if events else (),
            )

    # ---- deadlines and the watcher -----------------------------------------------------

    def _deadline(self) -> tuple[float, str]:
        """(time of the latest live lease's expiry, reason); inf = no deadline. Under _lock."""
        return self._leases.deadline(self._idle_timeout)

    def _wake_target(self) -> float:
        """When the watcher must next act (inf = never). Under _lock."""
        if self._state is not State.LOADED or self._in_flight or self._unload_waiting:
            return _INF
        deadline, _ = self._deadline()
        return min(deadline, self._next_check)

    def due(self) -> Callable[[], str | None] | None:
        """For the watcher (watcher.Watched), under _lock: the work due now, or None.

        An expired lease begins the unload here; the returned function finishes it (or
        runs the periodic check) outside the lock and returns the unload's reason.
        """
        if self._state is not State.LOADED or self._in_flight or self._unload_waiting:
            return None
        now = self._clock()
        deadline, reason = self._deadline()
        if deadline <= now:
            self._begin_unload_locked(reason)
            return functools.partial(self._finish_unload, reason)
        if self._next_check <= now:
            return self._run_check
        return None

    def wake_at(self) -> tuple[float, float]:
        """For the watcher (watcher.Watched), under _lock: (its next wake-up time, now)."""
        return self._wake_target(), self._clock()

    def _settle_locked(self, now: float) -> str:
        """Under _lock, after a lease was recorded at zero calls in flight: begin the
        unload if no lease is live any more (the reason; the caller finishes it outside
        the lock, before its call returns), else wake a watcher asleep past the new
        deadline (an explicit lease can end before the default lease it replaced)."""
        if self._state is not _LOADED:
            return ""
        deadline, reason = self._deadline()
        if deadline <= now:
            self._begin_unload_locked(reason)
            return reason
        if min(deadline, self._next_check) < self._shared.watch_until:
            self._wake.notify()
        return ""

    def _run_check(self) -> str | None:
        assert self._check is not None
        try:
            reason = self._check()
        except Exception:
            log.exception("%s: periodic check failed", self.name)
            reason = None
        with self._lock:
            self._next_check = self._clock() + self._check_interval
            if not (
                reason
                and self._state is State.LOADED
                and not self._in_flight
                and not self._unload_waiting
            ):
                return None
            self._begin_unload_locked(reason)
        return self._finish_unload(reason)

    def _new_watcher(self) -> threading.Thread:
        return threading.Thread(
            target=watch,
            args=(weakref.ref(self), self._shared, self._shared.generation),
            name=f"lazyembed-watcher-{self.name}",
            daemon=True,
        )

    # ---- fork ----------------------------------------------------------------------------

    def _reset_after_fork(self) -> None:
        """In the child: fresh locks, UNLOADED, no watcher; the parent's object is parked."""
        shared = self._shared
        shared.lock = threading.Lock()
        shared.changed = threading.Condition(shared.lock)
        shared.wake = threading.Condition(shared.lock)
        shared.generation += 1
        self._lock, self._changed, self._wake = shared.lock, shared.changed, shared.wake
        had_model = self._state in (State.LOADED, State.UNLOADING)
        for obj in (self._obj, self._dying):
            if obj is not None:
                _INHERITED.append(obj)
        self._obj = self._dying = None
        self._rss_before_load = None
        self._state = State.UNLOADED
        self._in_flight = self._unload_waiting = self._waiting = 0
        self._attempt = None
        self._leases.clear()
        self._next_check = _INF
        shared.watch_until = -math.inf
        self._watcher_thread = None
        if had_model:
            self._model_mb = 0.0
            self._journal.unloaded("fork", 0.0, None, None)
            log.info("%s: forked child starts unloaded (parent's copy left untouched)", self.name)

    # ---- leases kept elsewhere ------------------------------------------------------------

    def reset_leases(
        self, *, default_since: float | None, explicit_until: float | None, pinned: bool
    ) -> str | None:
        """Replace the lease state with one computed elsewhere; the reason if it unloaded.

        For the shared daemon, which keeps each client's leases apart and gives the
        lifecycle their union: the default lease as of ``default_since`` (None: none),
        the latest explicit expiry (None: none) and whether anyone pins. Unlike the
        leases calls leave (which only grow), this may shorten them: a dropped pin really
        un-pins. If every lease has then expired (nothing in flight), it unloads now;
        else the watcher re-plans. Times are on this lifecycle's clock.
        """
        now = self._clock()
        with self._lock:
            leases = self._leases
            leases.default_done = default_since
            leases.explicit_until = -_INF if explicit_until is None else explicit_until
            leases.pinned = pinned
            if self._in_flight or self._unload_waiting:
                return None  # the last call out (or the unload) settles it
            reason = self._settle_locked(now)
        if reason:
            self._finish_unload(reason)
            return reason
        return None
