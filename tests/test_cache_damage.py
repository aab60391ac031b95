"""The SQLite store damaged under a running process: truncated, deleted, replaced, schema lost.

Each time the running cache must notice (one warning), keep serving, and write to a
healthy store at the path again, as a new process would; a healthy file is never moved.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import warnings
from pathlib import Path

import pytest

from cache_helpers import assert_same, integrity, texts, vectors
from lazyembed.cache import CacheWarning, EmbeddingCache


def new_process_view(path: Path) -> EmbeddingCache:
    """What a process started now finds at `path` (it must open without a warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)


def cache_with_rows_in_the_file(path: Path) -> EmbeddingCache:
    cache = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)
    cache.put_many(texts(50), vectors(50))
    cache.vacuum()  # checkpoints: the rows are in the database file, the WAL is empty
    return cache


def one_warning(caught: list[warnings.WarningMessage]) -> str:
    assert [w.category for w in caught] == [CacheWarning], [str(w.message) for w in caught]
    return str(caught[0].message)


def test_file_truncated_while_running_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    cache = cache_with_rows_in_the_file(path)
    os.truncate(path, 0)  # as `: > c.db`, or a disk tool gone wrong
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache.put_many(["after"], vectors(1, seed=7))
        assert_same(cache.get_many(["after"])[0], vectors(1, seed=7)[0])
        cache.put_many(["more"], vectors(1, seed=8))
    message = one_warning(caught)
    assert "truncated" in message and "moved it to" in message
    stats = cache.stats()
    assert stats["degraded"] is False and len(stats["moved_aside"]) == 1
    assert Path(stats["moved_aside"][0]).name.startswith("c.db.corrupt-")
    assert stats["sqlite_entries"] == 2
    cache.close()
    assert integrity(path) == "ok"
    reader = new_process_view(path)
    assert_same(reader.get_many(["after"])[0], vectors(1, seed=7)[0])
    assert_same(reader.get_many(["more"])[0], vectors(1, seed=8)[0])


def test_schema_lost_while_running_rebuilds_instead_of_going_memory_only(
    tmp_path: Path,
) -> None:
    """A read then fails with "no such table": the file is not a store any more."""
    path = tmp_path / "c.db"
    cache = cache_with_rows_in_the_file(path)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("DROP TABLE embeddings")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.get_many(["t-0"]) == [None]  # never raises
        cache.put_many(["after"], vectors(1, seed=7))
    message = one_warning(caught)
    assert "no such table" in message and "moved it to" in message
    assert cache.stats()["degraded"] is False
    cache.close()
    assert_same(new_process_view(path).get_many(["after"])[0], vectors(1, seed=7)[0])


@pytest.mark.parametrize("sidecars", [False, True], ids=["file-only", "with-wal-and-shm"])
def test_file_deleted_while_running_is_recreated(tmp_path: Path, sidecars: bool) -> None:
    path = tmp_path / "c.db"
    cache = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)
    cache.put_many(["before"], vectors(1))
    os.unlink(path)  # as `rm c.db` (or `rm c.db*`) to clear the cache by hand
    if sidecars:
        for suffix in ("-wal", "-shm"):
            os.unlink(f"{path}{suffix}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache.put_many(["after"], vectors(1, seed=7))
        cache.put_many(["more"], vectors(1, seed=8))
    message = one_warning(caught)
    assert "deleted" in message
    assert path.exists() and cache.stats()["degraded"] is False
    assert cache.stats()["moved_aside"] == []
    reader = new_process_view(path)  # while the running cache is still open
    assert reader.get_many(["before"]) == [None]  # deleted with the file
    assert_same(reader.get_many(["after"])[0], vectors(1, seed=7)[0])
    assert_same(reader.get_many(["more"])[0], vectors(1, seed=8)[0])
    cache.close()
    reader.close()
    assert integrity(path) == "ok"
    assert_same(new_process_view(path).get_many(["more"])[0], vectors(1, seed=8)[0])


def test_file_replaced_by_another_process_is_followed(tmp_path: Path) -> None:
    """Another process moved the file aside and built a new store: write to that one."""
    path = tmp_path / "c.db"
    cache = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)
    cache.put_many(["before"], vectors(1))
    aside = tmp_path / "c.db.corrupt-by-hand"
    for suffix in ("", "-wal", "-shm"):
        os.rename(f"{path}{suffix}", f"{aside}{suffix}")
    other = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)
    other.put_many(["theirs"], vectors(1, seed=5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache.put_many(["mine"], vectors(1, seed=6))
        assert_same(cache.get_many(["theirs"])[0], vectors(1, seed=5)[0])
    assert "replaced" in one_warning(caught)
    assert cache.stats()["moved_aside"] == []  # nothing of ours moved the new store
    assert_same(other.get_many(["mine"])[0], vectors(1, seed=6)[0])
    cache.close()
    other.close()
    reader = new_process_view(path)
    assert_same(reader.get_many(["mine"])[0], vectors(1, seed=6)[0])
    assert_same(reader.get_many(["theirs"])[0], vectors(1, seed=5)[0])
    assert integrity(aside) == "ok"  # the file moved by hand is left as it was


def test_healthy_store_shrunk_or_shared_is_never_taken_for_damaged(tmp_path: Path) -> None:
    """Another cache clears and vacuums the shared file (it shrinks) between our writes."""
    path = tmp_path / "c.db"
    mine = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)
    theirs = EmbeddingCache("fp-other", memory_bytes=0, sqlite_path=path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mine.put_many(texts(20, "mine"), vectors(20))
        theirs.put_many(texts(500), vectors(500, seed=1))
        theirs.vacuum()
        size = path.stat().st_size
        theirs.clear(all_fingerprints=False)
        theirs.vacuum()
        assert path.stat().st_size < size
        mine.put_many(["after"], vectors(1, seed=7))
        assert all(v is not None for v in mine.get_many([*texts(20, "mine"), "after"]))
    assert mine.stats()["moved_aside"] == [] and theirs.stats()["moved_aside"] == []
    assert sorted(p.name for p in tmp_path.iterdir() if ".db." in p.name) == []
