"""Tests of the embedding cache's memory layer and API, with random float32 vectors."""

from __future__ import annotations

import contextlib
import sqlite3
import threading

import numpy as np
import pytest

from cache_child import DIM, vector_for
from cache_helpers import assert_same, entry_cost, texts, vectors
from lazyembed.cache import EmbeddingCache
from lazyembed.errors import InvalidInputError


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
