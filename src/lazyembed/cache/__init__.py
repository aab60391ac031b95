"""Embedding cache: an in-memory LRU bounded in bytes, plus an optional SQLite store.

Why: local memory tools embed the same texts again and again; a hit must be answered
without loading (or keeping alive) the model, and from memory at about the cost of a dict
lookup, so an all-hits embed() costs almost nothing.

`embedding_cache.EmbeddingCache` combines `memory_lru.MemoryLRU` (text → vector, bounded
in bytes) and `sqlite_store.SQLiteStore` (a WAL file shared by processes, bounded, with
bad or damaged files moved aside by `quarantine` and rebuilt); `sqlite_schema` holds the
file format and the one write transaction.
"""

from __future__ import annotations

from lazyembed.cache.embedding_cache import EmbeddingCache
from lazyembed.cache.sqlite_schema import SCHEMA_VERSION
from lazyembed.errors import CacheWarning

__all__ = ["SCHEMA_VERSION", "CacheWarning", "EmbeddingCache"]
