"""The lifecycle of one loaded thing: load on first use, unload when idle, never mid-call.

States UNLOADED → LOADING → LOADED → UNLOADING → UNLOADED. It holds whatever
``loader()`` returns (anything with ``close()``) and knows nothing of ONNX, so it is
testable with a fake loader and a fake clock (tests/test_lifecycle.py is its
specification). ``with lifecycle.acquire(keep_alive) as thing:`` is the only way in;
loads are single-flight, unloads happen only at zero calls in flight, and the longest
live keep-alive lease wins. docs/ARCHITECTURE.md ("Lifecycle") describes the states,
the lease rule, the watcher thread, fork handling and who holds which lock.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from lazyembed import memory
from lazyembed._fork import after_fork_in_child
from lazyembed.config.durations import KeepAlive
from lazyembed.config.settings import DEFAULT_IDLE_TIMEOUT
from lazyembed.errors import ConfigError, LazyEmbedError, ModelLoadError
from lazyembed.journal import Journal
from lazyembed.lease import Call, Closeable
from lazyembed.report import LifecycleStatus, State
from lazyembed.watcher import Shared, on_collected, watch

log = logging.getLogger("lazyembed")

_INF = math.inf
_NEG_INF = -math.inf


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
        self._default_done: float | None = None  # the default lease
        self._explicit_until = _NEG_INF  # latest explicit lease expiry
        self._pinned = False
        self._next_check = _INF
        self._watch_until = _NEG_INF  # what the watcher sleeps towards; -inf: not sleeping
        self._watcher_thread: threading.Thread | None = None
        self._wakeups = 0
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
        self._pinned = False
        self._explicit_until = _NEG_INF
        self._default_done = None
        self._next_check = _INF

    def _finish_unload(self, reason: str, note: str | None = None) -> None:
        """Outside the lock: close, drop the last reference, return memory, measure.

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
                or (self._pinned and not allow_pinned)
            ):
                return False
            pinned = self._pinned
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
        return self._pinned

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

        The watcher calls this logic too; tests with a fake clock call it directly.
        """
        with self._lock:
            action, value = self._plan_locked(self._clock())
            if action == "unload":
                self._begin_unload_locked(value)
        if action == "unload":
            self._finish_unload(value)
            return value
        if action == "check":
            return self._run_check()
        return None

    def close(self) -> None:
        """Stop the watcher and unload. Idempotent; a later acquire() loads again.

        The watcher stops first: a call slipping in before the unload is unloaded with
        it, and one after it loads again with a fresh watcher of its own.
        """
        with self._lock:
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
                pinned=self._pinned,
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
                watcher_wakeups=self._wakeups,
                events=tuple(dict(e) for e in journal.events) if events else (),
            )

    # ---- deadlines and the watcher -----------------------------------------------------

    def _deadline(self) -> tuple[float, str]:
        """(time of the latest live lease's expiry, reason); inf = no deadline. Under _lock."""
        if self._pinned:
            return _INF, "keep_alive"
        deadline, reason = self._explicit_until, "keep_alive"
        if self._default_done is not None:
            if self._idle_timeout is None:  # a default lease under "never" holds the model
                return _INF, "idle"
            default = self._default_done + self._idle_timeout
            if default >= deadline:
                deadline, reason = default, "idle"
        return (_INF if deadline == _NEG_INF else deadline), reason

    def _wake_target(self) -> float:
        """When the watcher must next act (inf = never). Under _lock."""
        if self._state is not State.LOADED or self._in_flight or self._unload_waiting:
            return _INF
        deadline, _ = self._deadline()
        return min(deadline, self._next_check)

    def _plan_locked(self, now: float) -> tuple[str, str]:
        """("unload", reason) | ("check", "") | ("wait", ""). Under _lock."""
        if self._state is not State.LOADED or self._in_flight or self._unload_waiting:
            return "wait", ""
        deadline, reason = self._deadline()
        if deadline <= now:
            return "unload", reason
        if self._next_check <= now:
            return "check", ""
        return "wait", ""

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
        self._finish_unload(reason)
        return reason

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
        self._pinned = False
        self._explicit_until = _NEG_INF
        self._default_done = None
        self._next_check = _INF
        self._watch_until = _NEG_INF
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
        with self._lock:
            self._default_done = default_since
            self._explicit_until = _NEG_INF if explicit_until is None else explicit_until
            self._pinned = pinned
            action, reason = self._plan_locked(self._clock())
            if action == "unload":
                self._begin_unload_locked(reason)
            else:
                self._wake.notify()
        if action == "unload":
            self._finish_unload(reason)
            return reason
        return None
