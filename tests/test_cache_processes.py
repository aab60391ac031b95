"""The embedding cache's SQLite store shared by processes: contention, SIGKILL, fork."""

from __future__ import annotations

import gc
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import warnings
import weakref
from pathlib import Path

import pytest

import lazyembed.cache.sqlite_store as store_module
from cache_child import vector_for
from cache_helpers import (
    WeakReferable,
    assert_same,
    is_open,
    spawn,
    texts,
    vectors,
    weak_referable_connect,
)
from lazyembed.cache import EmbeddingCache
from lazyembed.cache.sqlite_store import SQLiteStore


def _stop(child: subprocess.Popen[str]) -> None:
    """Kill the child if it still runs, reap it and close its pipe: a failed or timed-out
    wait fails its test and leaves no process behind."""
    if child.poll() is None:
        child.kill()
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


def _reap(pid: int, timeout: float) -> int:
    """The wait status of a forked child; one still running after ``timeout`` seconds
    (or when the wait is interrupted) is killed and reaped, and the error raised."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            if time.monotonic() >= deadline:
                raise AssertionError(f"forked child {pid} still running after {timeout} s")
            time.sleep(0.05)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


def test_two_processes_write_the_same_store(tmp_path: Path) -> None:
    path = str(tmp_path / "c.db")
    children = [spawn(path, "fp", name, "150", "150", "5") for name in ("a", "b")]
    try:
        outputs = [child.communicate(timeout=120)[0] for child in children]
    finally:
        for child in children:
            _stop(child)
    assert [child.returncode for child in children] == [0, 0]
    for out in outputs:
        stats = json.loads(out.splitlines()[-1].removeprefix("stats "))
        assert stats["degraded"] is False and stats["sqlite_skipped_writes"] == 0
    everything = texts(150, "a") + texts(150, "b") + texts(150, "shared")
    cache = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)
    for text, got in zip(everything, cache.get_many(everything), strict=True):
        assert_same(got, vector_for(text))
    assert cache.stats()["sqlite_entries"] == 450


def test_sigkill_during_writes_loses_no_committed_entry(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    child = spawn(str(path), "fp", "k", "0", "0", "7", "--forever")
    assert child.stdout is not None
    committed: list[str] = []
    try:
        for line in child.stdout:
            committed += line.split()[1:]
            if len(committed) >= 7 * 40:
                break
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()  # lines printed before the kill, still in the pipe
        child.wait(timeout=30)
    finally:
        _stop(child)
    assert child.returncode == -signal.SIGKILL
    for line in rest.splitlines():
        if line.startswith("done "):
            committed += line.split()[1:]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)
    for text, got in zip(committed, cache.get_many(committed), strict=True):
        assert_same(got, vector_for(text))
    assert cache.stats()["degraded"] is False


def store_of(cache: EmbeddingCache) -> SQLiteStore:
    store = cache._store
    assert store is not None
    return store


def conn_ref(cache: EmbeddingCache) -> weakref.ref[WeakReferable]:
    conn = store_of(cache)._conn
    assert isinstance(conn, WeakReferable)
    return weakref.ref(conn)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_never_closes_the_parents_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing (or freeing) an inherited SQLite connection in a child could touch the
    parent's locks or WAL: the child parks it for good and opens its own."""
    monkeypatch.setattr(store_module, "_connect", weak_referable_connect)
    path = tmp_path / "c.db"
    used, closed, dropped = (
        EmbeddingCache("fp", memory_bytes=0, sqlite_path=path) for _ in range(3)
    )
    used.put_many(["a"], vectors(1))
    refs = {"used": conn_ref(used), "closed": conn_ref(closed), "dropped": conn_ref(dropped)}
    held, release = threading.Event(), threading.Event()

    def in_a_store_call() -> None:  # another parent thread holds the lock during fork
        with store_of(used)._lock:
            held.set()
            release.wait()

    thread = threading.Thread(target=in_a_store_call)
    thread.start()
    held.wait()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            if store_of(used)._lock.locked():  # would hang: no thread here will release it
                os.write(write_end, b'"lock inherited held"')
                os._exit(1)
            got = used.get_many(["a"])[0]  # reopens the file with a connection of its own
            used.put_many(["from child"], vectors(1, seed=3))
            closed.close()
            del dropped
            gc.collect()
            report = {
                "read": got is not None and got.tobytes() == vectors(1)[0].tobytes(),
                "open": {name: is_open(ref) for name, ref in refs.items()},
                "own_connection": store_of(used)._conn is not None
                and not any(store_of(used)._conn is ref() for ref in refs.values()),
                "degraded": used.stats()["degraded"],
            }
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    try:
        release.set()
        thread.join()
        os.close(write_end)
    finally:
        wait_status = _reap(pid, timeout=120)
    with os.fdopen(read_end) as pipe:
        output = pipe.read()
    assert os.waitstatus_to_exitcode(wait_status) == 0, output
    assert json.loads(output) == {
        "read": True,
        "open": {"used": True, "closed": True, "dropped": True},
        "own_connection": True,
        "degraded": False,
    }
    # The parent is unaffected and sees the child's write.
    assert_same(used.get_many(["from child"])[0], vectors(1, seed=3)[0])
    assert all(is_open(ref) for ref in refs.values())
    used.put_many(["after"], vectors(1, seed=4))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
