"""The Lifecycle state machine with fake loaders, a fake clock and a fake memory probe.

The real model's memory, CPU and fork behaviour are in test_lifecycle_real.py.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from helpers import wait_until
from lazyembed.config import KeepAlive, parse_duration, parse_keep_alive
from lazyembed.errors import ClosedError, ConfigError, ModelLoadError, ModelNotFoundError
from lazyembed.lifecycle import _INHERITED, Lifecycle, State

MB = 2**20


class FakeMemory:
    """RSS = base + 50 MB per fake model not yet freed; freed by release_memory()."""

    def __init__(self) -> None:
        self.base = 100 * MB
        self.live: list[FakeModel] = []
        self.releases = 0

    def rss(self) -> int:
        return self.base + 50 * MB * len(self.live)

    def release(self) -> None:
        self.releases += 1
        self.live = [m for m in self.live if not m.closed]


class FakeModel:
    """Raises if used after close(): the lifecycle must never hand out a closed model."""

    def __init__(self, mem: FakeMemory | None = None) -> None:
        self.closed = False
        self.uses = 0
        if mem is not None:
            mem.live.append(self)

    def use(self) -> int:
        if self.closed:
            raise RuntimeError("used after close()")
        self.uses += 1
        return id(self)

    def close(self) -> None:
        if self.closed:
            raise RuntimeError("closed twice")
        self.closed = True


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Loader:
    """Counts calls; can be gated (to hold a load in progress) or made to fail."""

    def __init__(self, mem: FakeMemory | None = None) -> None:
        self.mem = mem
        self.calls = 0
        self.gate: threading.Event | None = None
        self.fail: BaseException | None = None
        self.made: list[FakeModel] = []
        self._lock = threading.Lock()

    def __call__(self) -> FakeModel:
        with self._lock:
            self.calls += 1
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.fail is not None:
            raise self.fail
        model = FakeModel(self.mem)
        self.made.append(model)
        return model


@pytest.fixture
def mem() -> FakeMemory:
    return FakeMemory()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(
    loader: Callable[[], FakeModel],
    mem: FakeMemory,
    clock: Callable[[], float] | None = None,
    **kwargs: object,
) -> Lifecycle[FakeModel]:
    options: dict[str, object] = {
        "memory_probe": mem.rss,
        "release_memory": mem.release,
        "watcher": False,
    }
    if clock is not None:
        options["clock"] = clock
    if "idle_timeout" in kwargs:
        kwargs["idle_timeout"] = dur(kwargs["idle_timeout"])  # type: ignore[arg-type]
    options.update(kwargs)
    return Lifecycle(loader, **options)  # type: ignore[arg-type]


def ka(value: float | str | None) -> KeepAlive:
    """A keep-alive as a caller would write it (None = default, negative = pin)."""
    return parse_keep_alive(value)


def dur(value: float | str | None) -> KeepAlive:
    """An idle timeout as a caller would write it (None or negative = never)."""
    return KeepAlive.FOREVER if value is None else parse_duration(value, key="idle_timeout")


def use(lc: Lifecycle[FakeModel], keep_alive: float | None = None) -> FakeModel:
    with lc.acquire(ka(keep_alive)) as model:
        model.use()
        return model


def state_of(lc: Lifecycle[FakeModel]) -> State:
    """The state, read through a function so mypy does not narrow it between reads."""
    return lc.state


# ---- loading ----------------------------------------------------------------------------


def test_first_use_loads_and_measures(mem: FakeMemory, clock: FakeClock) -> None:
    loader = Loader(mem)
    lc = make(loader, mem, clock)
    assert lc.status().state is State.UNLOADED and lc.status().idle_seconds is None
    model = use(lc)
    status = lc.status().as_dict()
    assert loader.calls == 1 and not model.closed
    assert status["state"] == "loaded" and status["model_loaded"] is True
    assert status["model_mb"] == 50.0 and status["loads"] == 1 and status["in_flight"] == 0
    assert [(e["kind"], e["reason"], e["mb"]) for e in status["events"]] == [
        ("load", "first_use", 50.0)
    ]
    assert use(lc) is model and loader.calls == 1  # reused, not reloaded
    assert lc.peek() is model and lc.status().loads == 1
    clock.advance(7)
    assert lc.status().idle_seconds == 7.0


def test_unload_measures_returned_memory_and_reload_is_transparent(mem: FakeMemory) -> None:
    loader = Loader(mem)
    lc = make(loader, mem)
    first = use(lc)
    assert lc.unload() is True and first.closed
    status = lc.status().as_dict()
    assert status["state"] == "unloaded" and status["model_mb"] == 0.0
    assert status["last_unload"]["reason"] == "explicit"
    assert status["last_unload"]["returned_mb"] == 50.0
    assert status["last_unload"]["rss_before_mb"] == 150.0
    assert status["last_unload"]["rss_after_mb"] == 100.0
    assert lc.unload() is False  # nothing loaded
    assert lc.peek() is None and loader.calls == 1  # peeking never loads
    second = use(lc)
    assert second is not first and not second.closed
    kinds = [(e["kind"], e["reason"]) for e in lc.status().events]
    assert kinds == [("load", "first_use"), ("unload", "explicit"), ("load", "reload")]


def test_single_flight_eight_threads_one_load(mem: FakeMemory) -> None:
    loader = Loader(mem)
    loader.gate = threading.Event()
    lc = make(loader, mem)
    got: list[FakeModel] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            got.append(use(lc))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    assert wait_until(lambda: lc.status().waiting == 7)
    assert lc.status().state is State.LOADING
    loader.gate.set()
    for t in threads:
        t.join(10)
    assert not errors and len(got) == 8
    assert loader.calls == 1 and all(m is got[0] for m in got)
    assert lc.status().loads == 1


def test_failed_load_raises_same_error_to_all_waiters_then_retries(mem: FakeMemory) -> None:
    loader = Loader(mem)
    loader.gate = threading.Event()
    cause = OSError("disk on fire")
    loader.fail = cause
    lc = make(loader, mem)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            use(lc)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    assert wait_until(lambda: lc.status().waiting == 7)
    loader.gate.set()
    for t in threads:
        t.join(10)
    assert len(errors) == 8 and loader.calls == 1
    assert all(e is errors[0] for e in errors)  # the same instance for every waiter
    assert isinstance(errors[0], ModelLoadError) and errors[0].__cause__ is cause
    status = lc.status().as_dict()
    assert status["state"] == "unloaded" and status["in_flight"] == 0 and status["loads"] == 0
    assert [(e["kind"], e["reason"]) for e in status["events"]] == [("load_failed", "first_use")]
    loader.fail = None
    model = use(lc)
    assert loader.calls == 2 and not model.closed and lc.status().loads == 1


def test_lazyembed_errors_from_the_loader_are_not_wrapped(mem: FakeMemory) -> None:
    loader = Loader(mem)
    loader.fail = ModelNotFoundError("no model here")
    lc = make(loader, mem)
    with pytest.raises(ModelNotFoundError, match="no model here"):
        use(lc)
    assert state_of(lc) is State.UNLOADED


def test_loader_returning_none_is_a_load_error(mem: FakeMemory) -> None:
    lc: Lifecycle[FakeModel] = make(lambda: None, mem)  # type: ignore[arg-type,return-value]
    with pytest.raises(ModelLoadError, match="None"):
        use(lc)
    assert state_of(lc) is State.UNLOADED


# ---- unloading never cuts a call -------------------------------------------------------


def test_unload_waits_for_calls_in_flight_and_new_callers_queue(mem: FakeMemory) -> None:
    loader = Loader(mem)
    lc = make(loader, mem)
    inside, leave = threading.Event(), threading.Event()
    holder: list[FakeModel] = []

    def long_call() -> None:
        with lc.acquire() as model:
            holder.append(model)
            inside.set()
            assert leave.wait(10)
            model.use()  # must still be usable: the unload waits for us

    results: list[bool] = []
    a = threading.Thread(target=long_call)
    a.start()
    assert inside.wait(10)
    u = threading.Thread(target=lambda: results.append(lc.unload()))
    u.start()
    assert wait_until(lambda: lc.status().unload_waiting == 1)
    late: list[FakeModel] = []
    c = threading.Thread(target=lambda: late.append(use(lc)))
    c.start()
    assert wait_until(lambda: lc.status().waiting == 1)  # queued behind the unload
    assert not results and not holder[0].closed and state_of(lc) is State.LOADED
    leave.set()
    for t in (a, u, c):
        t.join(10)
    assert results == [True] and holder[0].closed
    assert late and late[0] is not holder[0] and not late[0].closed
    assert loader.calls == 2


def test_unload_during_a_load_lets_the_waiters_in_first(mem: FakeMemory) -> None:
    loader = Loader(mem)
    loader.gate = threading.Event()
    lc = make(loader, mem)
    got: list[FakeModel] = []
    callers = [threading.Thread(target=lambda: got.append(use(lc))) for _ in range(3)]
    for t in callers:
        t.start()
    assert wait_until(lambda: lc.status().waiting == 2)
    results: list[bool] = []
    u = threading.Thread(target=lambda: results.append(lc.unload()))
    u.start()
    assert wait_until(lambda: lc.status().unload_waiting == 1)
    loader.gate.set()
    for t in [*callers, u]:
        t.join(10)
    assert len(got) == 3 and all(m is got[0] for m in got)  # served by the one load
    assert results == [True] and got[0].closed and loader.calls == 1


def test_stress_threads_with_random_unloads_never_see_a_closed_model(mem: FakeMemory) -> None:
    loader = Loader(mem)
    lc = make(loader, mem, idle_timeout=0.001, watcher=True)
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(200):
            try:
                with lc.acquire(ka(rng.choice([None, None, 0.0, 0.002, -1.0]))) as model:
                    model.use()
                    time.sleep(rng.choice([0, 0, 0, 0.0002]))
                    model.use()
            except BaseException as exc:
                errors.append(exc)
                return

    def chaos() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            time.sleep(rng.uniform(0, 0.001))
            lc.unload()
            lc.poll()

    workers = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    unloader = threading.Thread(target=chaos)
    unloader.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    stop.set()
    unloader.join(10)
    assert not errors, errors[:3]
    status = lc.status().as_dict()
    assert status["in_flight"] == 0 and status["waiting"] == 0
    assert status["unloads"] >= 1
    assert status["loads"] == status["unloads"] + int(status["model_loaded"]) == loader.calls
    assert sum(not m.closed for m in loader.made) == int(status["model_loaded"])
    lc.close()


# ---- deadlines (fake clock, poll() instead of the watcher) ------------------------------


def test_default_lease_counts_from_when_the_call_finished(
    mem: FakeMemory, clock: FakeClock
) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=60)
    with lc.acquire() as model:
        clock.advance(100)  # a long call: no unload while it runs
        assert lc.poll() is None
        model.use()
    assert lc.status().unload_in_s == 60.0
    clock.advance(59.9)
    assert lc.poll() is None and state_of(lc) is State.LOADED
    clock.advance(0.1)
    assert lc.poll() == "idle" and state_of(lc) is State.UNLOADED
    assert lc.status().last_unload["reason"] == "idle"
    assert lc.status().unload_in_s is None


def test_idle_timeout_zero_unloads_after_each_call(mem: FakeMemory, clock: FakeClock) -> None:
    loader = Loader(mem)
    lc = make(loader, mem, clock, idle_timeout=0)
    use(lc)  # the lease expired as the call ended: unloaded before use() returned
    assert state_of(lc) is State.UNLOADED and lc.status().last_unload["reason"] == "idle"
    use(lc)
    assert state_of(lc) is State.UNLOADED and loader.calls == 2
    assert lc.poll() is None


def test_keep_alive_zero_unloads_when_nothing_else_holds(mem: FakeMemory, clock: FakeClock) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=None)
    model = use(lc, keep_alive=0)
    # Unloaded before the call returned: never "loaded" (nor "unloading") afterwards.
    assert model.closed and state_of(lc) is State.UNLOADED
    assert lc.status().model_loaded is False and lc.is_loaded is False
    assert lc.status().last_unload["reason"] == "keep_alive"
    assert lc.poll() is None


def test_an_explicit_zero_replaces_the_default_lease_and_unloads_before_it_returns(
    mem: FakeMemory, clock: FakeClock
) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=60)
    use(lc)  # default lease until +60
    clock.advance(10)
    model = use(lc, keep_alive=0)  # Ollama's "unload now": it replaces the default lease
    assert model.closed and state_of(lc) is State.UNLOADED
    assert lc.status().last_unload["reason"] == "keep_alive"


def test_an_explicit_shorter_keep_alive_replaces_the_default_lease(
    mem: FakeMemory, clock: FakeClock
) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=1800)
    use(lc)
    use(lc, keep_alive=5)  # "5s, not the server's 30 minutes"
    assert lc.status().unload_in_s == 5.0
    clock.advance(4.9)
    assert lc.poll() is None
    clock.advance(0.1)
    assert lc.poll() == "keep_alive"


def test_a_default_call_after_an_explicit_one_renews_the_default_beside_it(
    mem: FakeMemory, clock: FakeClock
) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=60)
    use(lc, keep_alive=3600)
    use(lc)  # the default lease is back; the explicit hour stands: the longer wins
    assert lc.status().unload_in_s == 3600.0
    clock.advance(3599.9)
    assert lc.poll() is None
    clock.advance(0.1)
    assert lc.poll() == "keep_alive"
    use(lc, keep_alive=5)
    use(lc)  # now the default lease is the longer one
    assert lc.status().unload_in_s == 60.0
    clock.advance(60)
    assert lc.poll() == "idle"


def test_a_zero_never_cuts_another_callers_explicit_lease_or_pin(
    mem: FakeMemory, clock: FakeClock
) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=60)
    use(lc)
    use(lc, keep_alive=3600)
    use(lc, keep_alive=0)  # replaces the default lease, not the other caller's hour
    assert state_of(lc) is State.LOADED and lc.status().unload_in_s == 3600.0
    use(lc, keep_alive=-1)
    use(lc, keep_alive=0)
    clock.advance(10**9)
    assert lc.poll() is None and lc.pinned and state_of(lc) is State.LOADED


def test_a_zero_during_another_call_never_unloads_mid_call_the_last_lease_left_decides(
    mem: FakeMemory, clock: FakeClock
) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=60)
    with lc.acquire() as model:  # a default call in flight
        use(lc, keep_alive=0)
        assert state_of(lc) is State.LOADED and not model.closed
        model.use()
    assert lc.status().unload_in_s == 60.0  # it finished last: its default lease holds
    with lc.acquire(ka(0)):
        use(lc)  # finishes first, leaving a default lease ...
        assert state_of(lc) is State.LOADED
    assert state_of(lc) is State.UNLOADED  # ... that the 0 finishing after it replaced


@pytest.mark.parametrize("order", ["long_first", "zero_first"])
def test_one_callers_zero_never_cuts_another_callers_hour(
    mem: FakeMemory, clock: FakeClock, order: str
) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=None)
    values = [3600.0, 0.0] if order == "long_first" else [0.0, 3600.0]
    for keep_alive in values:
        use(lc, keep_alive=keep_alive)
        clock.advance(10)
    assert lc.poll() is None
    start = clock.now - 20 + (0 if order == "long_first" else 10)
    clock.now = start + 3599.9
    assert lc.poll() is None and state_of(lc) is State.LOADED
    clock.now = start + 3600
    assert lc.poll() == "keep_alive"


def test_concurrent_callers_longest_lease_wins(mem: FakeMemory, clock: FakeClock) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=None)
    with lc.acquire(ka(3600)):
        with lc.acquire(ka(0)):
            pass
        assert lc.poll() is None  # in flight
    assert lc.poll() is None
    clock.advance(3600)
    assert lc.poll() == "keep_alive"


def test_pin_holds_until_an_explicit_unload_which_clears_it(
    mem: FakeMemory, clock: FakeClock
) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=1)
    use(lc, keep_alive=-1)
    clock.advance(10**9)
    assert lc.poll() is None and lc.status().pinned is True
    assert lc.status().unload_in_s is None
    assert lc.unload() is True and lc.status().pinned is False
    use(lc)  # the pin is gone: the idle timeout applies again
    clock.advance(1)
    assert lc.poll() == "idle"


def test_never_timeout_never_unloads(mem: FakeMemory, clock: FakeClock) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=-1)
    assert lc.idle_timeout is KeepAlive.FOREVER
    use(lc)
    clock.advance(10**9)
    assert lc.poll() is None
    status = lc.status().as_dict()
    assert status["idle_timeout_s"] is None and status["unload_in_s"] is None


def test_under_never_an_explicit_keep_alive_replaces_the_default_lease_too(
    mem: FakeMemory, clock: FakeClock
) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=None)
    use(lc)  # a default lease that never expires
    clock.advance(3600)
    assert lc.poll() is None and lc.status().unload_in_s is None
    use(lc, keep_alive=60)
    assert lc.status().unload_in_s == 60.0
    use(lc)  # the never-ending default lease is back
    clock.advance(10**6)
    assert lc.poll() is None and state_of(lc) is State.LOADED
    use(lc, keep_alive=0)
    assert state_of(lc) is State.UNLOADED
    assert lc.status().last_unload["reason"] == "keep_alive"


def test_set_idle_timeout_changes_the_default_lease_only(mem: FakeMemory, clock: FakeClock) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=60)
    use(lc)
    use(lc, keep_alive=3600)  # replaced the default lease
    lc.set_idle_timeout(dur(0))
    assert lc.poll() is None and lc.status().unload_in_s == 3600.0
    lc.set_idle_timeout(dur(None))
    clock.advance(3600)
    assert lc.poll() == "keep_alive"


def test_a_lease_without_a_call_is_recorded_as_a_finished_calls_would_be(
    mem: FakeMemory, clock: FakeClock
) -> None:
    """`lease()` is a cache hit's keep-alive: the model is not used, the lease still is."""
    loader = Loader(mem)
    lc = make(loader, mem, clock, idle_timeout=3600)
    use(lc, keep_alive=2)
    lc.lease(ka(-1))
    assert lc.pinned and lc.status().unload_in_s is None
    assert lc.unload() is True
    use(lc)
    lc.lease(ka(5))  # replaces the default lease, as a call's 5 s would
    assert lc.status().unload_in_s == 5.0
    clock.advance(5)
    use(lc)
    lc.lease(ka(0))  # unloads before it returns: no other lease holds the model
    assert state_of(lc) is State.UNLOADED
    assert lc.status().last_unload["reason"] == "keep_alive"
    assert loader.calls == 2  # and lease() itself never loaded anything


def test_a_lease_without_a_call_never_loads_and_a_default_one_records_nothing(
    mem: FakeMemory, clock: FakeClock
) -> None:
    loader = Loader(mem)
    lc = make(loader, mem, clock, idle_timeout=60)
    lc.lease(ka(-1))  # unloaded: nothing to hold, and nothing loads
    assert loader.calls == 0 and state_of(lc) is State.UNLOADED
    use(lc)
    assert not lc.pinned  # the pin asked for while unloaded was not kept for later
    clock.advance(30)
    lc.lease(ka(None))  # the model was not used: its idle countdown goes on
    assert lc.status().unload_in_s == 30.0


def test_a_lease_without_a_call_during_a_call_never_unloads_mid_call(
    mem: FakeMemory, clock: FakeClock
) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=60)
    with lc.acquire(ka(5)) as model:
        lc.lease(ka(0))
        assert state_of(lc) is State.LOADED and not model.closed
    assert lc.status().unload_in_s == 5.0  # the call's own 5 s, left after the 0
    with lc.acquire():
        lc.lease(ka(-1))
    assert lc.pinned


def test_set_idle_timeout_applies_to_past_idleness(mem: FakeMemory, clock: FakeClock) -> None:
    lc = make(Loader(mem), mem, clock, idle_timeout=3600)
    use(lc)
    clock.advance(20 * 60)
    assert lc.poll() is None
    lc.set_idle_timeout(dur(10))
    assert lc.status().unload_in_s == 0.0
    assert lc.poll() == "idle"
    lc.set_idle_timeout(dur(None))
    use(lc)
    clock.advance(10**9)
    assert lc.poll() is None


def test_bad_keep_alive_and_timeout_values(mem: FakeMemory) -> None:
    lc = make(Loader(mem), mem)
    with pytest.raises(ConfigError, match="keep_alive"):
        lc.acquire(ka(float("nan")))
    with pytest.raises(ConfigError, match="idle_timeout"):
        lc.set_idle_timeout(dur(float("nan")))
    with pytest.raises(ConfigError, match="idle_timeout"):
        lc.set_idle_timeout(KeepAlive.DEFAULT)  # "default" is a per-call keep-alive only


def test_periodic_check_unloads_with_its_reason_and_sleeps_while_unloaded(
    mem: FakeMemory, clock: FakeClock
) -> None:
    answers = [None, "pressure"]
    calls: list[float] = []

    def check() -> str | None:
        calls.append(clock())
        return answers.pop(0) if answers else "pressure"

    lc = make(Loader(mem), mem, clock, idle_timeout=None, periodic_check=check, check_interval=5)
    assert lc.poll() is None and calls == []  # unloaded: never checked
    use(lc)
    clock.advance(4.9)
    assert lc.poll() is None and calls == []
    clock.advance(0.1)
    assert lc.poll() is None and len(calls) == 1  # said no
    clock.advance(5)
    assert lc.poll() == "pressure" and state_of(lc) is State.UNLOADED
    clock.advance(100)
    assert lc.poll() is None and len(calls) == 2
    assert lc.status().last_unload["reason"] == "pressure"


# ---- the watcher thread (real clock) ----------------------------------------------------


def test_watcher_unloads_after_a_real_one_second_timeout(mem: FakeMemory) -> None:
    lc = make(Loader(mem), mem, idle_timeout=1.0, watcher=True)
    use(lc)
    assert wait_until(lambda: state_of(lc) is State.UNLOADED, limit=10)
    assert lc.status().last_unload["reason"] == "idle"
    lc.close()


def test_watcher_has_no_wakeups_while_unloaded_never_or_pinned(mem: FakeMemory) -> None:
    lc = make(Loader(mem), mem, idle_timeout=0.05, watcher=True)
    use(lc)
    assert wait_until(lambda: state_of(lc) is State.UNLOADED)
    assert wait_until(lambda: lc.status().watcher_wakeups >= 1)  # settled after unload
    woken = lc.status().watcher_wakeups
    time.sleep(0.3)
    assert lc.status().watcher_wakeups == woken
    assert lc._shared.watch_until == float("inf")  # sleeping with no timeout at all
    lc.close()

    never = make(Loader(mem), mem, idle_timeout=None, watcher=True)
    for _ in range(100):  # a stream of calls wakes nobody
        use(never)
    use(never, keep_alive=-1)
    time.sleep(0.3)
    assert never.status().watcher_wakeups == 0 and state_of(never) is State.LOADED
    never.close()


def test_steady_calls_do_not_wake_the_watcher(mem: FakeMemory) -> None:
    lc = make(Loader(mem), mem, idle_timeout=3600, watcher=True)
    use(lc)
    inf = float("inf")
    assert wait_until(lambda: float("-inf") < lc._shared.watch_until < inf)  # asleep, timed
    woken = lc.status().watcher_wakeups
    for _ in range(500):
        use(lc)
    use(lc, keep_alive=7200)  # not earlier than the default lease: nothing to re-plan
    use(lc, keep_alive=-1)  # a pin only makes the deadline later
    time.sleep(0.2)
    assert lc.status().watcher_wakeups == woken
    lc.unload()
    use(lc)
    lc.set_idle_timeout(dur(0))  # due at once: the watcher is woken and unloads
    assert wait_until(lambda: state_of(lc) is State.UNLOADED)
    assert lc.status().last_unload["reason"] == "idle"
    lc.close()


def test_an_explicit_lease_ending_before_the_default_one_wakes_the_watcher(
    mem: FakeMemory,
) -> None:
    lc = make(Loader(mem), mem, idle_timeout=3600, watcher=True)
    use(lc)
    inf = float("inf")
    assert wait_until(lambda: float("-inf") < lc._shared.watch_until < inf)  # asleep, 1 h
    use(lc, keep_alive=0.05)  # replaces the hour: the watcher must not sleep past it
    assert wait_until(lambda: state_of(lc) is State.UNLOADED)
    assert lc.status().last_unload["reason"] == "keep_alive"
    lc.close()


def test_one_watcher_thread_started_on_first_load_and_stopped_by_close(
    mem: FakeMemory,
) -> None:
    before = threading.active_count()
    lc = make(Loader(mem), mem, idle_timeout=3600, watcher=True)
    assert threading.active_count() == before  # none while never loaded
    for _ in range(50):
        use(lc)
    assert threading.active_count() == before + 1
    lc.close()
    assert threading.active_count() == before and state_of(lc) is State.UNLOADED


def test_abandoned_lifecycle_is_collected_and_its_watcher_exits(mem: FakeMemory) -> None:
    lc = make(Loader(mem), mem, idle_timeout=3600, watcher=True)
    use(lc)
    thread = lc._watcher_thread
    assert thread is not None and thread.is_alive()
    del lc
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()


# ---- events, logs, fork -----------------------------------------------------------------


def test_events_are_bounded_and_logged(mem: FakeMemory, caplog: pytest.LogCaptureFixture) -> None:
    lc = make(Loader(mem), mem, max_events=3)
    with caplog.at_level(logging.INFO, logger="lazyembed"):
        for _ in range(3):
            use(lc)
            lc.unload()
    events = lc.status().events
    assert len(events) == 3
    assert [e["kind"] for e in events] == ["unload", "load", "unload"]
    assert all(isinstance(e["time"], float) and e["ms"] >= 0 for e in events)
    messages = [r.getMessage() for r in caplog.records if r.name == "lazyembed"]
    assert sum(" loaded (" in m for m in messages) == 3
    assert sum("unloaded (explicit)" in m for m in messages) == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_starts_unloaded_and_loads_its_own(mem: FakeMemory) -> None:
    loader = Loader(mem)
    lc = make(loader, mem, idle_timeout=3600, watcher=True)
    parent_model = use(lc)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            status = lc.status().as_dict()
            child_model = use(lc)
            report = {
                "state": status["state"],
                "last_event": [status["events"][-1]["kind"], status["events"][-1]["reason"]],
                "parent_model_parked": any(o is parent_model for o in _INHERITED),
                "parent_model_closed": parent_model.closed,
                "new_model": child_model is not parent_model and not child_model.closed,
                "loads": loader.calls,
                "watcher": lc._watcher_thread is not None and lc._watcher_thread.is_alive(),
            }
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, wait_status = os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        report = json.loads(pipe.read())
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert report == {
        "state": "unloaded",
        "last_event": ["unload", "fork"],
        "parent_model_parked": True,
        "parent_model_closed": False,
        "new_model": True,
        "loads": 2,
        "watcher": True,
    }
    assert state_of(lc) is State.LOADED and use(lc) is parent_model  # parent unaffected
    lc.close()


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    yield
    gc.collect()


# ---- failures inside a transition -------------------------------------------------------


class FlakyProbe:
    """A memory probe that fails on chosen calls (psutil can raise)."""

    def __init__(self, mem: FakeMemory, fail_on: set[int]) -> None:
        self.mem, self.fail_on, self.calls = mem, fail_on, 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls in self.fail_on:
            raise OSError("psutil hiccup")
        return self.mem.rss()


@pytest.mark.parametrize("fail_on", [{1}, {2}, {3}, {4}, {5}, {1, 2, 3, 4, 5}])
def test_a_failing_memory_probe_never_strands_the_lifecycle(
    mem: FakeMemory, fail_on: set[int]
) -> None:
    lc = make(Loader(mem), mem, memory_probe=FlakyProbe(mem, fail_on))
    use(lc)  # probes 1 and 2: around the load; 3: after the first call
    assert state_of(lc) is State.LOADED
    assert lc.unload() is True  # probes 4 and 5: around the unload
    assert state_of(lc) is State.UNLOADED
    use(lc)  # and it loads again
    status = lc.status().as_dict()
    assert status["loads"] == 2 and status["unloads"] == 1
    if fail_on & {4, 5}:
        assert status["last_unload"]["returned_mb"] == 0.0  # not measured, not invented


def test_model_mb_is_measured_after_the_first_call_since_the_load(mem: FakeMemory) -> None:
    """A load maps weights without touching them: what the model takes shows once it ran."""
    first_run_grows = 30 * MB

    class Growing(FakeModel):
        def use(self) -> int:
            if not self.uses:
                mem.base += first_run_grows  # the first inference faults the weights in
            return super().use()

    lc = make(lambda: Growing(mem), mem)
    use(lc)
    assert lc.status().model_mb == 80.0  # 50 at load + 30 by the first call
    use(lc)
    assert lc.status().model_mb == 80.0  # measured once per load, not per call


def test_a_failing_memory_release_still_ends_in_unloaded(mem: FakeMemory) -> None:
    def broken_release() -> None:
        raise MemoryError("trim failed")

    lc = make(Loader(mem), mem, release_memory=broken_release)
    first = use(lc)
    assert lc.unload() is True and first.closed and state_of(lc) is State.UNLOADED
    assert use(lc) is not first


def test_an_interrupted_unload_releases_the_callers_queued_behind_it(mem: FakeMemory) -> None:
    lc = make(Loader(mem), mem)
    inside, leave = threading.Event(), threading.Event()

    def long_call() -> None:
        with lc.acquire():
            inside.set()
            assert leave.wait(30)

    busy = threading.Thread(target=long_call)
    busy.start()
    assert inside.wait(10)
    late: list[FakeModel] = []
    late_caller = threading.Thread(target=lambda: late.append(use(lc)))

    def queue_then_interrupt() -> None:
        # Once the unload waits for the busy call, a late caller queues behind it; then
        # Ctrl-C reaches the main thread, inside unload()'s wait.
        assert wait_until(lambda: lc.status().unload_waiting == 1)
        late_caller.start()
        assert wait_until(lambda: lc.status().waiting == 1)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    helper = threading.Thread(target=queue_then_interrupt)
    helper.start()
    with pytest.raises(KeyboardInterrupt):
        lc.unload()  # on the main thread, where Python delivers the signal
    helper.join(10)
    late_caller.join(10)
    try:
        assert late, "a caller queued behind an interrupted unload was left waiting"
        assert state_of(lc) is State.LOADED  # the interrupted unload unloaded nothing
    finally:
        leave.set()
        busy.join(10)


def test_after_close_a_call_raises_closed_error_and_nothing_loads(mem: FakeMemory) -> None:
    loader = Loader(mem)
    lc = make(loader, mem, idle_timeout=3600, watcher=True)
    use(lc)
    lc.close()
    assert state_of(lc) is State.UNLOADED
    with pytest.raises(ClosedError, match="after close"):
        use(lc)
    lc.lease(ka(-1))  # a cache hit's lease: nothing to hold, nothing loads
    assert loader.calls == 1 and state_of(lc) is State.UNLOADED
    assert lc.unload() is False
    lc.close()  # idempotent


def test_a_call_during_close_gets_closed_error_and_the_call_in_flight_finishes(
    mem: FakeMemory,
) -> None:
    loader = Loader(mem)
    lc = make(loader, mem)
    refused: list[BaseException] = []

    def late_call() -> None:
        try:
            use(lc)
        except ClosedError as exc:
            refused.append(exc)

    with lc.acquire() as model:  # in flight: close() waits for it
        closer = threading.Thread(target=lc.close)
        closer.start()
        assert wait_until(lambda: lc.status().unload_waiting == 1)
        caller = threading.Thread(target=late_call)
        caller.start()
        caller.join(10)
        assert len(refused) == 1  # refused at once, not queued for a reload
        model.use()  # the call in flight still has its model
    closer.join(10)
    assert loader.calls == 1 and model.closed and state_of(lc) is State.UNLOADED
