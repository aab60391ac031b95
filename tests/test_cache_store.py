"""Tests of the embedding cache's SQLite store: round trips, lazy touches, eviction, stats."""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path
from typing import Any

import pytest

from cache_helpers import assert_same, entry_cost, texts, vectors
from lazyembed.cache import SCHEMA_VERSION, EmbeddingCache


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
    fill = cache._memory.insert
    raced: list[bool] = []

    def put_lands_first(*args: Any, **kwargs: Any) -> None:
        if not raced:  # the fill of the store hit: another thread's put gets there first
            raced.append(True)
            cache.put_many(["a"], vectors(1, seed=2))
        fill(*args, **kwargs)

    monkeypatch.setattr(cache._memory, "insert", put_lands_first)
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
