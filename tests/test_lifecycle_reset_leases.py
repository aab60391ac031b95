"""`Lifecycle.reset_leases`: the shared daemon's hook to replace the aggregate lease state.

A fake model and a fake clock; the watcher is off, so `poll()` is the only timer.
"""

from __future__ import annotations

from lazyembed.config import KeepAlive
from lazyembed.lifecycle import Lifecycle


class Thing:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(idle: float = 60.0) -> tuple[Lifecycle[Thing], Clock]:
    clock = Clock()
    lc: Lifecycle[Thing] = Lifecycle(
        Thing,
        idle_timeout=KeepAlive.after(idle),
        clock=clock,
        watcher=False,
        memory_probe=lambda: 0,
        release_memory=lambda: None,
    )
    return lc, clock


def test_dropping_the_only_pin_unpins_and_the_default_lease_then_applies() -> None:
    lc, clock = make()
    with lc.acquire(KeepAlive.FOREVER):
        pass
    assert lc.pinned
    clock.now += 10_000
    assert lc.poll() is None  # pinned: never idles out
    # The daemon's table says: nobody pins now, the default lease runs from now.
    assert lc.reset_leases(default_since=clock.now, explicit_until=None, pinned=False) is None
    assert not lc.pinned and lc.is_loaded
    clock.now += 59
    assert lc.poll() is None
    clock.now += 2
    assert lc.poll() == "idle" and not lc.is_loaded


def test_a_shortened_explicit_lease_is_honoured() -> None:
    lc, clock = make(idle=1000.0)
    with lc.acquire(KeepAlive.after(600)):
        pass
    # Leases left by calls only grow; the reset may shorten them (the client that held
    # the long one went away; another holds 5 s).
    lc.reset_leases(default_since=None, explicit_until=clock.now + 5, pinned=False)
    clock.now += 6
    assert lc.poll() == "keep_alive"


def test_an_already_expired_aggregate_unloads_at_once() -> None:
    lc, clock = make()
    with lc.acquire() as thing:
        pass
    assert lc.reset_leases(default_since=None, explicit_until=clock.now, pinned=False) == (
        "keep_alive"
    )
    assert not lc.is_loaded and thing.closed


def test_a_pin_set_by_reset_holds_and_nothing_happens_while_unloaded() -> None:
    lc, clock = make(idle=1.0)
    with lc.acquire():
        pass
    lc.reset_leases(default_since=clock.now, explicit_until=None, pinned=True)
    clock.now += 100
    assert lc.poll() is None and lc.is_loaded and lc.pinned
    lc.unload()
    assert lc.reset_leases(default_since=None, explicit_until=clock.now, pinned=False) is None
    assert not lc.is_loaded
