"""The memory layer of the embedding cache: an LRU of vectors by exact text, bounded in bytes.

Keyed by the text itself (Python caches a str's hash, so a lookup hashes nothing), so a hit
costs about a dict lookup. An entry is charged `vector.nbytes` + `sys.getsizeof(text)` +
`ENTRY_OVERHEAD` when it is inserted and exactly that charge is given back when it leaves:
`sys.getsizeof` of a non-ASCII str grows later, once CPython caches its UTF-8 form (the
sqlite3 binding, tokenizers and pickle do that), so recomputing it would drift the count.
Vectors are stored and returned read-only, without copies.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from lazyembed._fork import after_fork_in_child

FloatArray = npt.NDArray[np.float32]

ENTRY_OVERHEAD = 344
"""Bytes charged per entry beyond the vector data and the str: the ndarray header, the
bytes object of a vector read from SQLite, the (vector, cost) tuple and its int, the dict
slot and the LRU link (measured with tracemalloc)."""

_LIVE: weakref.WeakSet[MemoryLRU] = weakref.WeakSet()


@after_fork_in_child
def _after_fork_in_child() -> None:
    for lru in list(_LIVE):
        lru.reset_after_fork()


class MemoryLRU:
    """Text → read-only float32 vector, least recently used evicted past `max_bytes`.

    `_lock` guards the dict, the byte count and the counters; it is never held while
    another lock is taken.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[FloatArray, int]] = OrderedDict()  # (vec, cost)
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        _LIVE.add(self)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def lookup(self, texts: Sequence[str]) -> list[FloatArray | None]:
        """Cached vectors in input order, None on a miss; hits become the most recent."""
        out: list[FloatArray | None] = []
        misses = 0
        with self._lock:
            entries = self._entries
            for text in texts:
                entry = entries.get(text)
                if entry is None:
                    misses += 1
                    out.append(None)
                else:
                    entries.move_to_end(text)
                    out.append(entry[0])
            self._hits += len(out) - misses
            self._misses += misses
        return out

    def put(self, texts: Sequence[str], array: FloatArray) -> None:
        """Insert one row of `array` per text (copied, read-only); the last put wins."""
        if not self.enabled:
            return
        entries = []
        for text, row in zip(texts, array, strict=True):
            vector = row.copy()  # own its data: a row view would pin the whole batch
            vector.flags.writeable = False
            entries.append((text, vector))
        self.insert(entries, replace=True)

    def insert(self, entries: list[tuple[str, FloatArray]], *, replace: bool) -> None:
        """Add read-only vectors, then evict down to the bound. `replace` False (a store
        hit) keeps an entry already present: it may come from a put newer than the row."""
        if not self.enabled:
            return
        getsizeof = sys.getsizeof
        with self._lock:
            mem = self._entries
            for text, vector in entries:
                if not replace and text in mem:
                    continue
                cost = vector.nbytes + getsizeof(text) + ENTRY_OVERHEAD
                old = mem.pop(text, None)
                if old is not None:
                    self._bytes -= old[1]
                if cost > self.max_bytes:
                    continue
                mem[text] = (vector, cost)
                self._bytes += cost
            while self._bytes > self.max_bytes:
                _text, (_vector, cost) = mem.popitem(last=False)
                self._bytes -= cost
                self._evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "memory_hits": self._hits,
                "memory_misses": self._misses,
                "memory_entries": len(self._entries),
                "memory_bytes": self._bytes,
                "memory_max_bytes": self.max_bytes,
                "memory_evictions": self._evictions,
            }

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock (a parent thread may have held it at fork) and
        the byte count recomputed (that thread may have been between two steps)."""
        self._lock = threading.Lock()
        self._bytes = sum(cost for _vector, cost in self._entries.values())
