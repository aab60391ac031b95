"""`EmbeddingCache`: the memory LRU in front of the optional SQLite store, for one fingerprint.

Keys. The embedder builds a *fingerprint* from everything that changes a vector (weights,
variant, max_seq_length, pooling, normalisation, tokenizer, converter version). One cache
serves exactly one fingerprint: its memory layer belongs to it alone, and every SQLite
row carries the fingerprint's id next to the blake2b-16 of the text, so a vector stored
under another fingerprint is never returned. Rows of stale fingerprints age out through
the store's LRU eviction.

A store hit fills the memory layer after the store's lock is released, so it never
replaces an entry already there: that one may come from a newer put_many.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lazyembed.cache.memory_lru import FloatArray, MemoryLRU
from lazyembed.cache.sqlite_store import DISABLED_STATS, SQLiteStore
from lazyembed.errors import ConfigError, InvalidInputError


def text_key(text: str) -> bytes:
    """The store's key of a text: blake2b-16 of its UTF-8 (a lone surrogate allowed)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class EmbeddingCache:
    """Vectors of one model fingerprint, by exact text: memory LRU, then SQLite."""

    def __init__(
        self,
        fingerprint: str,
        *,
        memory_bytes: int,
        sqlite_path: str | os.PathLike[str] | None = None,
        sqlite_max_bytes: int | None = None,
        dim: int = 384,
        busy_timeout: float = 5.0,
        touch_interval: float = 3600.0,
        evict_every: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`memory_bytes` 0 disables the memory layer; `sqlite_path` None disables the
        store; `sqlite_max_bytes` None or <= 0 means unbounded. `busy_timeout` (seconds)
        is how long a write waits for another process's write lock before it is skipped;
        `touch_interval` how old `last_used` must be before a hit refreshes it;
        `evict_every` how many rows are put between two checks of the bound. `clock`
        (wall seconds) stamps `last_used` and is injectable for tests."""
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ConfigError(f"cache fingerprint must be a non-empty str, got {fingerprint!r}")
        if memory_bytes < 0:
            raise ConfigError(f"cache memory_bytes must be >= 0, got {memory_bytes!r}")
        if dim <= 0:
            raise ConfigError(f"cache dim must be > 0, got {dim!r}")
        if evict_every <= 0:
            raise ConfigError(f"cache evict_every must be > 0, got {evict_every!r}")
        self.fingerprint = fingerprint
        self.dim = dim
        self._max_bytes = (
            int(sqlite_max_bytes) if sqlite_max_bytes is not None and sqlite_max_bytes > 0 else None
        )
        self._memory = MemoryLRU(memory_bytes)
        self._store: SQLiteStore | None = None
        if sqlite_path is not None:
            self._store = SQLiteStore(
                Path(sqlite_path),
                fingerprint,
                dim=dim,
                max_bytes=self._max_bytes,
                busy_timeout=busy_timeout,
                touch_interval=touch_interval,
                evict_every=evict_every,
                clock=clock,
            )

    def get_many(self, texts: Sequence[str]) -> list[FloatArray | None]:
        """Cached vectors in input order (read-only float32 (dim,) arrays), None on a miss."""
        out = self._memory.lookup(texts)
        store = self._store
        if store is None:
            return out
        missing = [i for i, vector in enumerate(out) if vector is None]
        if not missing:
            return out
        found = store.get_many([text_key(texts[i]) for i in missing])
        fill: dict[str, FloatArray] = {}
        for i, vector in zip(missing, found, strict=True):
            if vector is not None:
                out[i] = vector
                fill.setdefault(texts[i], vector)
        if fill and self._memory.enabled:
            # A put_many of the same text may have filled memory since the store was
            # read; replace=False keeps its (newer) vector.
            self._memory.insert(list(fill.items()), replace=False)
        return out

    def put_many(self, texts: Sequence[str], vectors: npt.ArrayLike) -> None:
        """Store one vector per text (float32, shape (len(texts), dim)); the last put wins."""
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape != (len(texts), self.dim):
            raise InvalidInputError(
                f"put_many needs vectors of shape ({len(texts)}, {self.dim}), got {array.shape}"
            )
        if not len(texts):
            return
        self._memory.put(texts, array)
        if self._store is not None:
            self._store.put_many([text_key(text) for text in texts], array)

    def clear(self, *, all_fingerprints: bool = True) -> None:
        """Empty the memory layer and the store (every fingerprint's rows by default)."""
        self._memory.clear()
        if self._store is not None:
            self._store.clear(all_fingerprints=all_fingerprints)

    def vacuum(self) -> None:
        """Give the store's free pages back to the file system (rewrites the file)."""
        if self._store is not None:
            self._store.vacuum()

    def close(self) -> None:
        """Write queued `last_used` refreshes and close the store; memory stays usable."""
        if self._store is not None:
            self._store.close()

    def stats(self) -> dict[str, Any]:
        """Counters and sizes for `get_memory_usage()`, /metrics and `lazyembed cache stats`.

        `sqlite_bytes` is the bytes of pages in use (what `sqlite_max_bytes` bounds);
        `sqlite_file_bytes` is the database plus its WAL on disk.
        """
        report: dict[str, Any] = {"fingerprint": self.fingerprint, **self._memory.stats()}
        if self._store is not None:
            report.update(self._store.stats())
        else:
            report.update({**DISABLED_STATS, "sqlite_max_bytes": self._max_bytes})
            report["moved_aside"] = []
        hits = report["memory_hits"] + report["sqlite_hits"]
        lookups = report["memory_hits"] + report["memory_misses"]
        # A text missed by memory is looked up in the store, so final misses are the
        # store's misses when the store answered and the memory misses otherwise.
        report["hits"] = hits
        report["misses"] = lookups - hits
        report["lookups"] = lookups
        report["hit_rate"] = hits / lookups if lookups else 0.0
        return report
