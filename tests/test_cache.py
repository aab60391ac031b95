"""Tests of the embedding cache with random float32 vectors (the cache knows no model)."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lazyembed.cache as cache_module
from cache_child import vector_for
from lazyembed.cache import SCHEMA_VERSION, CacheWarning, EmbeddingCache
from lazyembed.errors import InvalidInputError

DIM = 384
CHILD = Path(__file__).with_name("cache_child.py")


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)


def texts(n: int, prefix: str = "t") -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def entry_cost(text: str) -> int:
    """The memory an entry is charged, measured through the cache itself."""
    cache = EmbeddingCache("fp", memory_bytes=1 << 20)
    cache.put_many([text], vectors(1))
    cost: int = cache.stats()["memory_bytes"]
    return cost


def assert_same(got: np.ndarray | None, want: np.ndarray) -> None:
    assert got is not None
    assert got.dtype == np.float32 and got.shape == (DIM,)
    assert got.tobytes() == want.tobytes()


# ---- memory layer ------------------------------------------------------------------------


def test_memory_round_trip_is_bitwise_and_read_only() -> None:
    cache = EmbeddingCache("fp", memory_bytes=1 << 20)
    vecs = vectors(5)
    vecs[0, 0] = np.float32(1e-45)  # a subnormal survives too
    cache.put_many(texts(5), vecs)
    got = cache.get_many([*texts(5), "absent"])
    for g, v in zip(got[:5], vecs, strict=True):
        assert_same(g, v)
        assert g is not None and not g.flags.writeable
    assert got[5] is None
    vecs[:] = 0  # the cache holds its own copy
    assert_same(cache.get_many(["t-1"])[0], vectors(5)[1])


def test_memory_lru_is_bounded_in_bytes_and_evicts_least_recent() -> None:
    cost = entry_cost("t-0")
    cache = EmbeddingCache("fp", memory_bytes=3 * cost + cost // 2)
    cache.put_many(texts(3), vectors(3))
    cache.get_many(["t-0"])  # t-0 becomes the most recent; t-1 is now the oldest
    cache.put_many(["t-3"], vectors(1, seed=3))
    got = cache.get_many(texts(4))
    assert [g is not None for g in got] == [True, False, True, True]
    stats = cache.stats()
    assert stats["memory_entries"] == 3
    assert stats["memory_bytes"] == 3 * cost <= stats["memory_max_bytes"]
    assert stats["memory_evictions"] == 1


def test_memory_charge_grows_with_text_length() -> None:
    assert entry_cost("x" * 10_000) - entry_cost("x") >= 9_999


def test_entry_larger_than_the_memory_bound_is_not_kept() -> None:
    cache = EmbeddingCache("fp", memory_bytes=entry_cost("a") - 1)
    cache.put_many(["a"], vectors(1))
    assert cache.get_many(["a"]) == [None]
    assert cache.stats()["memory_bytes"] == 0


def test_put_replaces_and_keeps_the_byte_count_exact() -> None:
    cache = EmbeddingCache("fp", memory_bytes=1 << 20)
    cache.put_many(["a"], vectors(1, seed=1))
    before = cache.stats()["memory_bytes"]
    cache.put_many(["a"], vectors(1, seed=2))
    assert cache.stats()["memory_bytes"] == before
    assert_same(cache.get_many(["a"])[0], vectors(1, seed=2)[0])


def test_memory_byte_count_stays_exact_when_texts_grow_after_insertion() -> None:
    """A non-ASCII str grows once CPython caches its UTF-8 form (sqlite3 binding does it):
    an entry must give back what it was charged, not its size at eviction."""
    fresh = entry_cost(f"é-{0:05d}")
    cache = EmbeddingCache("fp", memory_bytes=10 * fresh)
    names = [f"é-{i:05d}" for i in range(200)]
    with contextlib.closing(sqlite3.connect(":memory:")) as binder:
        for name in names:
            cache.put_many([name], vectors(1))
            binder.execute("SELECT ?", (name,)).fetchone()  # the str grows: its UTF-8 copy
    assert entry_cost(names[0]) > fresh  # the premise: the texts did grow
    stats = cache.stats()
    assert (stats["memory_entries"], stats["memory_bytes"]) == (10, 10 * fresh)
    # Replacing a grown entry gives back its old charge and charges its size now.
    cache.put_many([names[-1]], vectors(1, seed=1))
    stats = cache.stats()
    assert stats["memory_entries"] == 9
    assert stats["memory_bytes"] == 8 * fresh + entry_cost(names[-1]) <= 10 * fresh


def test_put_many_rejects_a_wrong_shape() -> None:
    cache = EmbeddingCache("fp", memory_bytes=1 << 20)
    with pytest.raises(InvalidInputError):
        cache.put_many(["a", "b"], vectors(1))
    with pytest.raises(InvalidInputError):
        cache.put_many(["a"], np.zeros((1, DIM + 1), dtype=np.float32))


def test_memory_fingerprints_are_separate() -> None:
    a = EmbeddingCache("fp-a", memory_bytes=1 << 20)
    b = EmbeddingCache("fp-b", memory_bytes=1 << 20)
    a.put_many(["same text"], vectors(1))
    assert b.get_many(["same text"]) == [None]


def test_concurrent_threads_get_what_was_put() -> None:
    cache = EmbeddingCache("fp", memory_bytes=64 * entry_cost("w0-00"))
    errors: list[str] = []

    def work(worker: int) -> None:
        names = [f"w{worker}-{i:02d}" for i in range(50)]
        for round_ in range(20):
            batch = names[round_ % 5 :: 5]
            cache.put_many(batch, np.stack([vector_for(t) for t in batch]))
            for text, got in zip(batch, cache.get_many(batch), strict=True):
                if got is not None and got.tobytes() != vector_for(text).tobytes():
                    errors.append(text)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = cache.stats()
    assert stats["memory_bytes"] <= stats["memory_max_bytes"]
    assert stats["memory_hits"] + stats["memory_misses"] == 6 * 20 * 10


# ---- SQLite store --------------------------------------------------------------------------


def test_store_round_trip_across_instances_is_bitwise(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.sqlite"
    vecs = vectors(300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = EmbeddingCache("fp", memory_bytes=1 << 20, sqlite_path=path)
        first.put_many(texts(300), vecs)
        first.close()
        second = EmbeddingCache("fp", memory_bytes=1 << 20, sqlite_path=path)
    order = [299, 0, 7, 7, 150]  # repeats and any order
    got = second.get_many([f"t-{i}" for i in order])
    for g, i in zip(got, order, strict=True):
        assert_same(g, vecs[i])
    stats = second.stats()
    assert (stats["sqlite_hits"], stats["memory_misses"]) == (5, 5)
    assert stats["memory_entries"] == 4  # the store hit filled the memory layer
    second.get_many(["t-299"])
    assert second.stats()["memory_hits"] == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_store_lookups_of_more_than_one_sql_chunk(tmp_path: Path) -> None:
    cache = EmbeddingCache("fp", memory_bytes=0, sqlite_path=tmp_path / "c.db")
    vecs = vectors(1200)
    cache.put_many(texts(1200), vecs)
    got = cache.get_many(texts(1200)[::-1])
    for g, v in zip(got, vecs[::-1], strict=True):
        assert_same(g, v)


def test_store_fingerprints_are_separate(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    a = EmbeddingCache("weights=1;variant=fp32;max_seq=256", memory_bytes=0, sqlite_path=path)
    a.put_many(["same text"], vectors(1))
    a.close()
    b = EmbeddingCache("weights=1;variant=int8;max_seq=256", memory_bytes=0, sqlite_path=path)
    c = EmbeddingCache("weights=1;variant=fp32;max_seq=128", memory_bytes=0, sqlite_path=path)
    assert b.get_many(["same text"]) == [None]
    assert c.get_many(["same text"]) == [None]
    b.put_many(["same text"], vectors(1, seed=9))
    again = EmbeddingCache("weights=1;variant=fp32;max_seq=256", memory_bytes=0, sqlite_path=path)
    assert_same(again.get_many(["same text"])[0], vectors(1)[0])
    assert again.stats()["sqlite_entries_all_fingerprints"] == 2


def test_a_store_hit_does_not_replace_a_newer_put_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put_many landing between a store read and the memory fill it causes wins."""
    path = tmp_path / "c.db"
    EmbeddingCache("fp", memory_bytes=0, sqlite_path=path).put_many(["a"], vectors(1, seed=1))
    cache = EmbeddingCache("fp", memory_bytes=1 << 20, sqlite_path=path)
    fill = cache._insert_memory
    raced: list[bool] = []

    def put_lands_first(*args: Any, **kwargs: Any) -> None:
        if not raced:  # the fill of the store hit: another thread's put gets there first
            raced.append(True)
            cache.put_many(["a"], vectors(1, seed=2))
        fill(*args, **kwargs)

    monkeypatch.setattr(cache, "_insert_memory", put_lands_first)
    assert_same(cache.get_many(["a"])[0], vectors(1, seed=1)[0])  # what it read
    assert raced == [True]
    assert_same(cache.get_many(["a"])[0], vectors(1, seed=2)[0])  # the newer put stays
    assert cache.stats()["memory_hits"] == 1


def test_hits_on_fresh_rows_write_nothing_and_old_rows_are_touched_lazily(
    tmp_path: Path,
) -> None:
    now = [1_000_000.0]
    path = tmp_path / "c.db"
    cache = EmbeddingCache(
        "fp", memory_bytes=0, sqlite_path=path, touch_interval=60, clock=lambda: now[0]
    )
    cache.put_many(texts(3), vectors(3))
    spy = sqlite3.connect(path)
    version = spy.execute("PRAGMA data_version").fetchone()[0]
    for _ in range(50):
        cache.get_many(texts(3))
    assert spy.execute("PRAGMA data_version").fetchone()[0] == version  # no write
    now[0] += 3600
    cache.get_many(["t-0"])  # old row: queued, still no write
    assert spy.execute("PRAGMA data_version").fetchone()[0] == version
    cache.close()  # the queued refresh is written
    rows = dict(spy.execute("SELECT vector, last_used FROM embeddings").fetchall())
    assert rows[vectors(3)[0].tobytes()] == 1_003_600
    assert rows[vectors(3)[1].tobytes()] == 1_000_000


def test_store_evicts_least_recently_used_under_its_bound(tmp_path: Path) -> None:
    now = [1_000_000.0]
    path = tmp_path / "c.db"
    bound = 300_000
    cache = EmbeddingCache(
        "fp",
        memory_bytes=0,
        sqlite_path=path,
        sqlite_max_bytes=bound,
        touch_interval=10,
        evict_every=16,
        clock=lambda: now[0],
    )
    cache.put_many(texts(40, "old"), vectors(40))
    keep = texts(40, "old")[:10]
    for step in range(10):
        now[0] += 100
        # Used again before each put: their last_used is refreshed (lazily, with the put).
        assert all(v is not None for v in cache.get_many(keep))
        cache.put_many(texts(20, f"new{step}"), vectors(20, seed=step + 1))
    stats = cache.stats()
    assert stats["sqlite_bytes"] <= bound
    assert stats["sqlite_evictions"] > 0
    assert all(v is not None for v in cache.get_many(keep))
    assert cache.get_many(texts(40, "old")[10:]) == [None] * 30
    assert all(v is not None for v in cache.get_many(texts(20, "new9")))


def test_eviction_deletes_one_batch_and_keeps_recently_used_rows(tmp_path: Path) -> None:
    """Every other row used again, then the bound is crossed: only rows not used since
    are deleted (deleting scattered rows frees no page; a loop on the page count used to
    delete most of the store, recently used rows included)."""
    now = [1_000_000.0]
    path = tmp_path / "c.db"
    filler = EmbeddingCache(
        "fp", memory_bytes=0, sqlite_path=path, touch_interval=10, clock=lambda: now[0]
    )
    names = texts(1790)
    for start in range(0, len(names), 64):
        batch = names[start : start + 64]
        filler.put_many(batch, vectors(len(batch), seed=start))
    bound = filler.stats()["sqlite_bytes"] * 102 // 100  # one more put crosses it
    now[0] += 100
    used_again = names[::2]
    assert all(v is not None for v in filler.get_many(used_again))
    filler.close()  # writes their last_used
    not_used_again = len(names) - len(used_again)
    cache = EmbeddingCache(
        "fp",
        memory_bytes=0,
        sqlite_path=path,
        sqlite_max_bytes=bound,
        evict_every=64,
        clock=lambda: now[0],
    )
    for step in range(5):
        now[0] += 100
        cache.put_many(texts(64, f"new{step}"), vectors(64, seed=10_000 + step))
        stats = cache.stats()
        assert 0 < stats["sqlite_evictions"] <= not_used_again
        assert all(v is not None for v in cache.get_many(used_again))
        assert stats["sqlite_bytes"] <= bound
    assert all(v is not None for v in cache.get_many(texts(64, "new4")))


def test_vacuum_shrinks_the_file_and_clear_empties_both_layers(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    cache = EmbeddingCache("fp", memory_bytes=1 << 20, sqlite_path=path)
    cache.put_many(texts(500), vectors(500))
    cache.put_many(["keep"], vectors(1))
    cache.vacuum()
    full = path.stat().st_size
    cache.clear()
    assert cache.get_many(["keep", "t-1"]) == [None, None]
    cache.vacuum()
    assert path.stat().st_size < full / 10
    stats = cache.stats()
    assert (stats["memory_entries"], stats["sqlite_entries"]) == (0, 0)


def test_stats_count_hits_and_misses_per_layer(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    writer = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)
    writer.put_many(["s1", "s2"], vectors(2))
    cache = EmbeddingCache("fp", memory_bytes=1 << 20, sqlite_path=path)
    cache.put_many(["m1"], vectors(1))
    cache.get_many(["m1", "s1", "s2", "x"])  # memory 1 hit; store 2 hits, 1 miss
    cache.get_many(["s1", "y"])  # memory 1 hit (filled); store 1 miss
    stats = cache.stats()
    assert stats["memory_hits"] == 2 and stats["memory_misses"] == 4
    assert stats["sqlite_hits"] == 2 and stats["sqlite_misses"] == 2
    assert (stats["hits"], stats["misses"], stats["lookups"]) == (4, 2, 6)
    assert stats["hit_rate"] == pytest.approx(4 / 6)
    assert stats["memory_entries"] == 3 and stats["sqlite_entries"] == 3
    # An entry filled from the store is charged like one put directly.
    assert stats["memory_bytes"] == 3 * entry_cost("m1")
    assert stats["sqlite_path"] == str(path) and stats["degraded"] is False


# ---- several processes, crashes ---------------------------------------------------------


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(CHILD), *args], stdout=subprocess.PIPE, text=True)


def test_two_processes_write_the_same_store(tmp_path: Path) -> None:
    path = str(tmp_path / "c.db")
    children = [spawn(path, "fp", name, "150", "150", "5") for name in ("a", "b")]
    outputs = [child.communicate(timeout=120)[0] for child in children]
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
    for line in child.stdout:
        committed += line.split()[1:]
        if len(committed) >= 7 * 40:
            break
    child.send_signal(signal.SIGKILL)
    rest = child.stdout.read()  # lines printed before the kill, still in the pipe
    child.wait(timeout=30)
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


class WeakReferable(sqlite3.Connection):
    """A real connection a test can hold a weak reference to (sqlite3.Connection can't)."""


def connect_with(
    factory: type[sqlite3.Connection],
) -> Callable[[Path, float], sqlite3.Connection]:
    """A stand-in for cache._connect opening the same kind of connection of `factory`."""

    def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
        return sqlite3.connect(
            str(path),
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            factory=factory,
        )

    return connect


weak_referable_connect = connect_with(WeakReferable)


def conn_ref(cache: EmbeddingCache) -> weakref.ref[WeakReferable]:
    conn = cache._conn
    assert isinstance(conn, WeakReferable)
    return weakref.ref(conn)


def is_open(ref: weakref.ref[WeakReferable]) -> bool:
    conn = ref()
    if conn is None:
        return False  # freed, which closes it
    try:
        conn.in_transaction  # noqa: B018 - raises on a closed connection, does no I/O
    except sqlite3.ProgrammingError:
        return False
    return True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_never_closes_the_parents_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing (or freeing) an inherited SQLite connection in a child could touch the
    parent's locks or WAL: the child parks it for good and opens its own."""
    monkeypatch.setattr(cache_module, "_connect", weak_referable_connect)
    path = tmp_path / "c.db"
    used, closed, dropped = (
        EmbeddingCache("fp", memory_bytes=0, sqlite_path=path) for _ in range(3)
    )
    used.put_many(["a"], vectors(1))
    refs = {"used": conn_ref(used), "closed": conn_ref(closed), "dropped": conn_ref(dropped)}
    held, release = threading.Event(), threading.Event()

    def in_a_store_call() -> None:  # another parent thread holds the lock during fork
        with used._db_lock:
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
            if used._db_lock.locked():  # would hang: no thread here will release it
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
                "own_connection": used._conn is not None
                and not any(used._conn is ref() for ref in refs.values()),
                "degraded": used.stats()["degraded"],
            }
            os.write(write_end, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    release.set()
    thread.join()
    os.close(write_end)
    _, wait_status = os.waitpid(pid, 0)
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


# ---- bad files ---------------------------------------------------------------------------


def make_garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(8192))


def make_wrong_schema(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('precious')")
        conn.commit()


def make_newer_version(path: Path) -> None:
    EmbeddingCache("fp", memory_bytes=0, sqlite_path=path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.commit()


@pytest.mark.parametrize(
    ("make", "kind"),
    [(make_garbage, "corrupt"), (make_wrong_schema, "foreign"), (make_newer_version, "newer")],
)
def test_bad_file_is_moved_aside_and_rebuilt(tmp_path: Path, make: object, kind: str) -> None:
    path = tmp_path / "c.db"
    make(path)  # type: ignore[operator]
    original = path.read_bytes()
    with pytest.warns(CacheWarning, match="moved it to"):
        cache = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)
    aside = list(tmp_path.glob(f"c.db.{kind}-*"))
    assert len(aside) == 1 and not aside[0].name.endswith(("-wal", "-shm"))
    if kind != "newer":  # the newer store was in WAL mode; its pages may sit in -wal
        assert aside[0].read_bytes() == original
    assert cache.stats()["moved_aside"] == [str(aside[0])]
    cache.put_many(["a"], vectors(1))
    cache.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)
    assert_same(again.get_many(["a"])[0], vectors(1)[0])
    assert again.stats()["degraded"] is False


def refuse_rename(src: object, dst: object) -> None:
    raise PermissionError(13, "Permission denied", str(src))


def test_bad_file_that_cannot_be_moved_aside_degrades_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in a read-only directory (simulated: root may rename anything)."""
    path = tmp_path / "c.db"
    make_garbage(path)
    original = path.read_bytes()
    monkeypatch.setattr(os, "rename", refuse_rename)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = EmbeddingCache("fp", memory_bytes=1 << 20, sqlite_path=path)
        cache.put_many(["a"], vectors(1))
        got = cache.get_many(["a"])[0]
    assert [w.category for w in caught] == [CacheWarning]
    message = str(caught[0].message)
    assert "memory only" in message and "cannot move it aside" in message
    assert "Permission denied" in message
    assert_same(got, vectors(1)[0])
    stats = cache.stats()
    assert stats["degraded"] is True and stats["moved_aside"] == []
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.db"]


def test_corruption_found_while_running_that_cannot_be_moved_aside_degrades(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "_connect", malformed_on_demand_connect)
    path = tmp_path / "c.db"
    cache = EmbeddingCache("fp", memory_bytes=1 << 20, sqlite_path=path)
    EmbeddingCache("fp", memory_bytes=0, sqlite_path=path).put_many(["a"], vectors(1))
    monkeypatch.setattr(os, "rename", refuse_rename)
    monkeypatch.setattr(MalformedOnDemand, "broken", True)
    with pytest.warns(CacheWarning, match="cannot move it aside"):
        assert cache.get_many(["a"]) == [None]  # never raises
    cache.put_many(["b"], vectors(1, seed=2))
    assert_same(cache.get_many(["b"])[0], vectors(1, seed=2)[0])  # from memory
    assert cache.stats()["degraded"] is True


def test_empty_file_is_a_fresh_store(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    path.touch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)
    cache.put_many(["a"], vectors(1))
    assert cache.get_many(["a"])[0] is not None


# ---- degraded persistence ----------------------------------------------------------------


@contextlib.contextmanager
def read_only_directory() -> Iterator[Path]:
    """A directory this process cannot write to (as root: seteuid to nobody meanwhile)."""
    base = Path(tempfile.mkdtemp(prefix="lazyembed-ro-"))
    base.chmod(0o755)
    ro = base / "ro"
    ro.mkdir()
    EmbeddingCache("fp", memory_bytes=0, sqlite_path=ro / "existing.db").close()
    make_garbage(ro / "corrupt.db")
    for p in ro.iterdir():
        p.chmod(0o444)
    ro.chmod(0o555)
    root = os.geteuid() == 0
    try:
        if root:
            os.seteuid(65534)
        try:
            (ro / "probe").touch()
        except PermissionError:
            pass
        else:
            pytest.skip("cannot make a read-only directory here")
        yield ro
    finally:
        if root:
            os.seteuid(0)
        ro.chmod(0o755)
        shutil.rmtree(base)


@pytest.mark.parametrize("name", ["new.db", "existing.db", "sub/new.db", "corrupt.db"])
def test_read_only_location_degrades_to_memory_with_one_warning(name: str) -> None:
    with read_only_directory() as ro:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache = EmbeddingCache("fp", memory_bytes=1 << 20, sqlite_path=ro / name)
            cache.put_many(texts(3), vectors(3))
            got = cache.get_many(texts(3))
            cache.put_many(["more"], vectors(1))
            cache.vacuum()
            cache.clear()
            cache.close()
        assert [w.category for w in caught] == [CacheWarning]
        for g, v in zip(got, vectors(3), strict=True):
            assert_same(g, v)
        stats = cache.stats()
        assert stats["degraded"] is True and stats["degraded_reason"]


def test_unopenable_path_degrades(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.warns(CacheWarning, match="memory only"):
        cache = EmbeddingCache("fp", memory_bytes=1 << 20, sqlite_path=tmp_path / "file" / "c")
    cache.put_many(["a"], vectors(1))
    assert_same(cache.get_many(["a"])[0], vectors(1)[0])


def test_full_disk_degrades_with_one_warning_and_never_raises(tmp_path: Path) -> None:
    cache = EmbeddingCache("fp", memory_bytes=1 << 20, sqlite_path=tmp_path / "c.db")
    cache.put_many(["before"], vectors(1))
    conn = cache._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite then reports SQLITE_FULL
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(5):
            cache.put_many(texts(50, f"b{i}"), vectors(50, seed=i))
        got = cache.get_many(texts(50, "b4"))
    assert [w.category for w in caught] == [CacheWarning]
    assert "full" in str(caught[0].message)
    assert all(g is not None for g in got)  # still served from memory
    assert cache.stats()["degraded"] is True


def test_busy_store_skips_the_write_without_degrading(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    cache = EmbeddingCache("fp", memory_bytes=1 << 20, sqlite_path=path, busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.put_many(["a"], vectors(1))
    other.execute("ROLLBACK")
    stats = cache.stats()
    assert stats["sqlite_skipped_writes"] == 1 and stats["degraded"] is False
    assert_same(cache.get_many(["a"])[0], vectors(1)[0])  # from memory
    cache.put_many(["b"], vectors(1, seed=2))  # the store works again afterwards
    reader = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)
    assert reader.get_many(["a", "b"])[0] is None
    assert_same(reader.get_many(["b"])[0], vectors(1, seed=2)[0])


def test_store_busy_at_open_is_opened_later_without_degrading(tmp_path: Path) -> None:
    """Another process holds the write lock past busy_timeout while caches open."""
    path = tmp_path / "c.db"
    EmbeddingCache("fp", memory_bytes=0, sqlite_path=path).put_many(["a"], vectors(1))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # A known fingerprint opens without writing, so it reads meanwhile.
        known = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path, busy_timeout=0.05)
        assert_same(known.get_many(["a"])[0], vectors(1)[0])
        # A new fingerprint must write its id: the store stays unopened for now.
        new = EmbeddingCache("fp-new", memory_bytes=1 << 20, sqlite_path=path, busy_timeout=0.05)
        new.put_many(["b"], vectors(1, seed=2))
        assert new.stats()["degraded"] is False
        assert new.stats()["sqlite_entries"] is None  # not open yet
        other.execute("ROLLBACK")
        new.put_many(["c"], vectors(1, seed=3))  # opens the store now
    assert new.stats()["degraded"] is False and known.stats()["degraded"] is False
    reader = EmbeddingCache("fp-new", memory_bytes=0, sqlite_path=path)
    assert reader.get_many(["b"]) == [None]  # put while the store was not open
    assert_same(reader.get_many(["c"])[0], vectors(1, seed=3)[0])


def test_store_reopened_after_fork_while_busy_does_not_degrade(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    cache = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path, busy_timeout=0.05)
    cache.put_many(["a"], vectors(1))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    cache._pid = -1  # as in a child forked without the at-fork hook: reopens on use
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(cache.get_many(["a"])[0], vectors(1)[0])
    other.execute("ROLLBACK")
    assert cache.stats()["degraded"] is False


class MalformedOnDemand(sqlite3.Connection):
    """A real connection that reports corruption while `broken` is set."""

    broken = False

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if MalformedOnDemand.broken and sql.startswith("SELECT key"):
            raise sqlite3.DatabaseError("database disk image is malformed")
        return super().execute(sql, *args)  # type: ignore[arg-type]


malformed_on_demand_connect = connect_with(MalformedOnDemand)


def test_corruption_found_while_running_rebuilds_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "_connect", malformed_on_demand_connect)
    path = tmp_path / "c.db"
    cache = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)
    cache.put_many(["a"], vectors(1))
    MalformedOnDemand.broken = True
    try:
        with pytest.warns(CacheWarning, match="malformed"):
            assert cache.get_many(["a"]) == [None]  # never raises
    finally:
        MalformedOnDemand.broken = False
    assert len(list(tmp_path.glob("c.db.corrupt-*"))) == 1
    cache.put_many(["b"], vectors(1, seed=2))
    assert_same(cache.get_many(["b"])[0], vectors(1, seed=2)[0])
    assert cache.stats()["degraded"] is False
