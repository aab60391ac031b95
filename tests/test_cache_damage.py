"""The SQLite store damaged under a running process: truncated, deleted, replaced, schema lost.

Each time the running cache must notice (one warning), keep serving, and write to a
healthy store at the path again, as a new process would; a healthy file is never moved.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import warnings
from pathlib import Path

import pytest

import lazyembed.cache.sqlite_store as store_module
from cache_child import vector_for
from cache_helpers import (
    MalformedOnDemand,
    assert_same,
    integrity,
    malformed_on_demand_connect,
    spawn,
    texts,
    vectors,
)
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


def test_store_damaged_again_and_again_degrades_after_a_few_rebuilds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that keeps corrupting files: a bounded number of files moved aside."""
    monkeypatch.setattr(store_module, "_connect", malformed_on_demand_connect)
    monkeypatch.setattr(MalformedOnDemand, "broken", True)
    path = tmp_path / "c.db"
    cache = EmbeddingCache("fp", memory_bytes=1 << 20, sqlite_path=path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for round_ in range(6):
            assert cache.get_many([f"t-{round_}"]) == [None]  # never raises
    messages = [str(w.message) for w in caught]
    assert len(messages) == 4 and all("malformed" in m for m in messages)
    assert "memory only" in messages[-1]
    stats = cache.stats()
    assert stats["degraded"] is True and len(stats["moved_aside"]) == 3
    cache.put_many(["a"], vectors(1))
    assert_same(cache.get_many(["a"])[0], vectors(1)[0])  # memory still serves


def test_another_process_keeps_every_entry_put_after_the_file_was_deleted(
    tmp_path: Path,
) -> None:
    """A writing process whose store is deleted under it: from its first write to the new
    file on, every entry it reported committed is there (then SIGKILL, mid-write)."""
    path = tmp_path / "c.db"
    child = spawn(str(path), "fp", "k", "0", "0", "5", "--forever")
    assert child.stdout is not None
    committed: list[str] = []
    reader: EmbeddingCache | None = None
    lines_after = -1  # lines read since one was seen in the new file
    try:
        for line in child.stdout:
            batch = line.split()[1:]
            committed += batch
            if len(committed) == 5 * 10:
                os.unlink(path)
            elif len(committed) > 5 * 10 and lines_after < 0:
                if reader is None and path.exists():
                    reader = EmbeddingCache("fp", memory_bytes=0, sqlite_path=path)
                if reader is not None and all(v is not None for v in reader.get_many(batch)):
                    lines_after = 0
            elif lines_after >= 0:
                lines_after += 1
            if lines_after >= 10 or len(committed) > 5 * 5000:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()
        child.stdout.close()
        child.wait(timeout=30)
    assert lines_after >= 10, "the child never wrote to a new file"
    for line in rest.splitlines():
        if line.startswith("done "):
            committed += line.split()[1:]
    assert integrity(path) == "ok"
    got = new_process_view(path).get_many(committed)
    first = next(i for i, vector in enumerate(got) if vector is not None)
    assert first >= 5 * 10  # what was put before the deletion went with the file
    for text, vector in zip(committed[first:], got[first:], strict=True):
        assert_same(vector, vector_for(text))
