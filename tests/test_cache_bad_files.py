"""The embedding cache with bad store files, unusable locations, full disks and busy stores."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import lazyembed.cache.sqlite_store as store_module
from cache_helpers import (
    MalformedOnDemand,
    assert_same,
    make_garbage,
    make_newer_version,
    make_wrong_schema,
    malformed_on_demand_connect,
    refuse_rename,
    texts,
    vectors,
)
from lazyembed.cache import CacheWarning, EmbeddingCache
from lazyembed.cache.sqlite_store import SQLiteStore


def store_of(cache: EmbeddingCache) -> SQLiteStore:
    store = cache._store
    assert store is not None
    return store


# ---- bad files ---------------------------------------------------------------------------


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
    monkeypatch.setattr(store_module, "_connect", malformed_on_demand_connect)
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
    conn = store_of(cache)._conn
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
    store_of(cache)._pid = -1  # as in a child forked without the at-fork hook: reopens on use
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(cache.get_many(["a"])[0], vectors(1)[0])
    other.execute("ROLLBACK")
    assert cache.stats()["degraded"] is False


def test_corruption_found_while_running_rebuilds_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_connect", malformed_on_demand_connect)
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
