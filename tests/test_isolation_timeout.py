"""A stopped (SIGSTOP) or hung isolated worker cannot make a call wait forever.

Each test stops a real worker at a different point of a call, with a small injected
timeout, and checks the typed error, that the worker is gone, and that the next call
works. No timing is asserted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from lazyembed.errors import (
    ClosedError,
    ConfigError,
    WorkerDiedError,
    WorkerError,
    WorkerTimeoutError,
)
from lazyembed.isolation import CALL_TIMEOUT, IsolatedRuntime, load_isolated, protocol
from lazyembed.runtime import EncodeResult, RuntimeSpec
from test_isolation import spec, wait_gone, zombies_among_children

__all__ = ["spec"]  # the module-scoped fixture, shared with test_isolation.py

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals")

SMALL_TIMEOUT = 0.5


@pytest.fixture
def quick(spec: RuntimeSpec) -> Iterator[IsolatedRuntime]:
    """A runtime whose calls time out quickly (only the stopped call runs with it)."""
    rt = load_isolated(spec, call_timeout=SMALL_TIMEOUT, per_text_timeout=1e-6)
    pid = rt.pid
    yield rt
    if pid is not None:  # never leave a stopped process behind, whatever happened
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    rt.close()


def assert_timed_out_then_recovers(rt: IsolatedRuntime, error: BaseException, pid: int) -> None:
    assert isinstance(error, WorkerTimeoutError), repr(error)
    assert isinstance(error, WorkerDiedError) and isinstance(error, TimeoutError)
    assert f"worker {pid}" in str(error)
    assert not rt.alive and rt.pid is None
    assert wait_gone([pid]) == []  # killed although stopped, and reaped
    assert zombies_among_children() == []
    rt.call_timeout = CALL_TIMEOUT  # the next call must not depend on the machine's speed
    again = rt.encode(["the next call starts a new worker"])
    assert again.vectors.shape == (1, rt.spec.dimension)
    assert rt.alive and rt.pid not in (None, pid)
    assert rt.restarts == 1


def test_stopped_worker_times_out_and_the_next_call_restarts(quick: IsolatedRuntime) -> None:
    pid = quick.pid
    assert pid is not None
    assert quick.encode(["before the stop"]).vectors.shape[0] == 1
    os.kill(pid, signal.SIGSTOP)
    with pytest.raises(WorkerTimeoutError) as info:
        quick.encode(["nobody answers this"])
    assert "stopped" in str(info.value)  # the message says what the OS saw
    assert_timed_out_then_recovers(quick, info.value, pid)


def test_stopped_worker_cannot_block_a_large_request(quick: IsolatedRuntime) -> None:
    """A request larger than the pipe holds: the parent's write itself would block."""
    pid = quick.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    # Distinct texts (pickle would send a repeated one once): megabytes of request.
    texts = [f"{i}: a long text that fills the pipe " * 30 for i in range(4000)]
    with pytest.raises(WorkerTimeoutError) as info:
        quick.encode(texts)
    assert_timed_out_then_recovers(quick, info.value, pid)


def test_worker_stopped_in_the_middle_of_a_reply(
    quick: IsolatedRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply has begun (poll said so) when the worker stops: the read must not hang."""
    worker = quick._worker
    assert worker is not None
    pid = worker.pid
    real_poll = worker.conn.poll

    def poll_then_stop(timeout: float | None = 0.0) -> bool:
        ready = real_poll(timeout)
        os.kill(pid, signal.SIGSTOP)  # the worker is still writing a reply of megabytes
        return ready

    monkeypatch.setattr(worker.conn, "poll", poll_then_stop)
    texts = [f"t{i}" for i in range(1500)]  # ~2 MB of vectors: more than the pipe holds
    quick.per_text_timeout = 1.0  # the computing itself must not time out
    with pytest.raises(WorkerTimeoutError) as info:
        quick.encode(texts)
    assert_timed_out_then_recovers(quick, info.value, pid)


def test_call_deadline_grows_with_the_call(spec: RuntimeSpec) -> None:
    rt = load_isolated(spec, call_timeout=30.0, per_text_timeout=0.5)
    try:
        assert rt.call_deadline(0) == 30.0
        assert rt.call_deadline(100) == 80.0
    finally:
        rt.close()


def test_use_after_close_raises_closed_error(spec: RuntimeSpec) -> None:
    rt = load_isolated(spec)
    rt.close()
    with pytest.raises(ClosedError):
        rt.encode(["after close"])
    with pytest.raises(ClosedError):
        rt.encode([])  # answered without the worker, still closed


def test_malformed_reply_is_detected() -> None:
    buffer = protocol.reply_buffer(2, 4)
    buffer[:] = 0
    problem = protocol.reply_problem(buffer, buffer.size, 2, 4)
    assert problem is not None and "malformed" in problem
    protocol.HEADER.pack_into(buffer, 0, protocol.STATUS_OK, 2, 4, 0)
    assert protocol.reply_problem(buffer, buffer.size, 2, 4) is None
    assert protocol.reply_problem(buffer, buffer.size - 1, 2, 4) is not None
    vectors = np.arange(8, dtype=np.float32).reshape(2, 4)
    frame = protocol.reply_frame(EncodeResult(vectors, [3, 5]))
    buffer[:] = np.frombuffer(frame, dtype=np.uint8)
    result = protocol.parse_reply(buffer, buffer.size, 2, 4)
    np.testing.assert_array_equal(result.vectors, vectors)
    assert result.token_counts == [3, 5]


def test_unpicklable_worker_error_becomes_a_worker_error() -> None:
    class Local(Exception):  # a local class cannot be pickled by reference
        pass

    error = protocol.remote_error(protocol.error_frame(Local("boom")))
    assert isinstance(error, WorkerError)
    assert "Local: boom" in str(error)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), True, "10"])
def test_bad_timeouts_are_config_errors_before_any_worker_starts(
    spec: RuntimeSpec, bad: object
) -> None:
    for key in ("load_timeout", "call_timeout", "per_text_timeout"):
        with pytest.raises(ConfigError, match=key):
            load_isolated(spec, **{key: bad})  # type: ignore[arg-type]
    assert zombies_among_children() == []
