"""The daemon's pure bookkeeping with a fake clock: per-client leases and the idle exit."""

from __future__ import annotations

from lazyembed.config import KeepAlive
from lazyembed.daemon.leases import Aggregate, ClientLeases, IdleExit

A, B = 1, 2


def test_the_union_follows_the_in_process_rule() -> None:
    leases = ClientLeases()
    leases.record(A, KeepAlive.DEFAULT, 10.0)
    leases.record(B, KeepAlive.after(30), 12.0)
    leases.record(B, KeepAlive.after(5), 13.0)  # a shorter one never shrinks B's lease
    assert leases.aggregate() == Aggregate(10.0, 42.0, False)
    leases.record(A, KeepAlive.FOREVER, 20.0)
    assert leases.aggregate() == Aggregate(10.0, 42.0, True)


def test_an_explicit_zero_lease_is_a_lease_and_no_default() -> None:
    leases = ClientLeases()
    leases.record(A, KeepAlive.after(0), 50.0)
    assert leases.aggregate() == Aggregate(None, 50.0, False)


def test_a_disconnected_pin_holder_unpins_and_leaves_a_default_lease_from_now() -> None:
    leases = ClientLeases()
    leases.record(A, KeepAlive.FOREVER, 10.0)
    leases.record(B, KeepAlive.DEFAULT, 11.0)
    assert leases.disconnect(A, 100.0) == Aggregate(100.0, None, False)
    assert len(leases) == 1
    assert leases.disconnect(A, 101.0) is None  # gone already: nothing to change


def test_a_disconnect_keeps_the_other_clients_pin_and_an_expired_lease_adds_nothing() -> None:
    leases = ClientLeases()
    leases.record(A, KeepAlive.after(5), 10.0)
    leases.record(B, KeepAlive.FOREVER, 10.0)
    # A's explicit lease ended at 15: nothing of it stays after it leaves at 20.
    assert leases.disconnect(A, 20.0) == Aggregate(None, None, True)
    assert leases.disconnect(B, 30.0) == Aggregate(30.0, None, False)


def test_a_default_only_client_that_leaves_keeps_its_default_lease() -> None:
    leases = ClientLeases()
    leases.record(A, KeepAlive.DEFAULT, 10.0)
    assert leases.disconnect(A, 20.0) == Aggregate(10.0, None, False)


def test_the_default_lease_a_departed_client_left_outlives_later_calls_of_others() -> None:
    leases = ClientLeases()
    leases.record(A, KeepAlive.FOREVER, 10.0)
    leases.disconnect(A, 100.0)
    leases.record(B, KeepAlive.after(10), 110.0)
    assert leases.aggregate() == Aggregate(100.0, 120.0, False)
    leases.clear()  # the model unloaded: every lease ended
    assert leases.aggregate() == Aggregate(None, None, False) and len(leases) == 0


def test_release_expires_everything_now_unless_someone_else_holds_a_lease() -> None:
    leases = ClientLeases()
    leases.record(A, KeepAlive.FOREVER, 10.0)
    leases.record(B, KeepAlive.after(60), 10.0)
    leases.record(3, KeepAlive.DEFAULT, 10.0)
    leases.disconnect(3, 11.0)  # a client that left has no say in a release
    assert leases.release(A, 20.0) == Aggregate(None, 70.0, False)
    assert leases.release(B, 21.0) == Aggregate(None, 21.0, False)
    assert leases.release(B, 22.0) == Aggregate(None, 22.0, False)  # nobody: unload


def test_holders_describe_each_client() -> None:
    leases = ClientLeases()
    leases.record(A, KeepAlive.after(10), 0.0)
    leases.record(B, KeepAlive.FOREVER, 0.0)
    leases.record(B, KeepAlive.DEFAULT, 2.0)
    assert leases.holders(4.0) == [
        {"client": A, "pinned": False, "explicit_left_s": 6.0, "default_age_s": None},
        {"client": B, "pinned": True, "explicit_left_s": None, "default_age_s": 2.0},
    ]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_idle_exit_counts_from_the_last_busy_moment_and_fires_once() -> None:
    clock = Clock()
    busy = [False]
    exits: list[float] = []
    idle = IdleExit(
        60.0, busy=lambda: busy[0], on_exit=lambda: exits.append(clock.now), clock=clock
    )
    clock.now = 59.0
    assert not idle.poll() and idle.seconds_left() == 1.0
    busy[0] = True  # a model loads: the countdown stops
    clock.now = 200.0
    assert not idle.poll()
    busy[0] = False
    clock.now = 259.0
    assert not idle.poll()
    clock.now = 260.0
    assert idle.poll() and exits == [260.0]
    clock.now = 1000.0
    assert not idle.poll() and exits == [260.0]


def test_idle_exit_never() -> None:
    clock = Clock()
    idle = IdleExit(None, busy=lambda: False, on_exit=lambda: None, clock=clock)
    clock.now = 1e9
    assert not idle.poll() and idle.seconds_left() is None
