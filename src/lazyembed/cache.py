"""Embedding cache: an in-memory LRU bounded in bytes, plus an optional SQLite store.

Why: local memory tools embed the same texts again and again; a hit must be answered
without loading (or keeping alive) the model, and must be cheap enough (~1 µs from memory)
that an all-hits embed() costs almost nothing.

Keys. The embedder builds a *fingerprint* string from everything that changes a vector
(weights hash, variant, max_seq_length, pooling, normalisation, converter version). One
`EmbeddingCache` serves exactly one fingerprint: its memory layer belongs to it alone, and
every SQLite row carries the fingerprint's id in its primary key, so a vector stored under
another fingerprint can never be returned. Rows of stale fingerprints simply age out
through the store's LRU eviction.

Memory layer. An `OrderedDict[str, (ndarray, cost)]` keyed by the text itself (Python
caches a str's hash, so a lookup costs no hashing of the text) in LRU order. Its size is
bounded in bytes; an entry is charged `vector.nbytes` + `sys.getsizeof(text)` +
`_ENTRY_OVERHEAD` (344: the ndarray header ~112, the bytes object header of a vector read
from SQLite 33, the (vector, cost) tuple and its int ~88, the dict slot and LRU link
~70-110, measured with tracemalloc) when it is inserted, and exactly that charge is
subtracted when it leaves: `sys.getsizeof(text)` of a non-ASCII str grows later, once
CPython caches its UTF-8 form (sqlite3 binding, tokenizers and pickle do that). Returned
vectors are the cached read-only float32 arrays themselves (no copy); a caller that wants
to modify one must copy it.

SQLite store (opt-in). One row per (fingerprint id, blake2b-16 of the UTF-8 text) holding
the float32 bytes and a `last_used` time in whole seconds. Durability: WAL mode with
`synchronous=NORMAL` — every entry whose `put_many` returned survives a crash of the
process (SIGKILL included: the commit is in the WAL file in the OS page cache); a power
loss or OS crash can lose the most recent commits since the last WAL checkpoint, but the
file stays consistent. `busy_timeout` lets several processes share one file.

- Hits do not become writes: `last_used` is refreshed only for rows older than
  `touch_interval` seconds, and those refreshes are queued and written in one batch
  (with the next put, every `_TOUCH_BATCH` queued rows, or at close). A refreshed row is
  moved to the end of the table (a new rowid), where new rows go too, so the table's
  order follows the LRU order and eviction frees whole pages. Entries that stay hot in
  the memory layer are not touched in the store at all, so the store may evict them
  first; a restarted process then recomputes them once.
- Bound: `sqlite_max_bytes` is compared with the bytes of the pages in use
  (`(page_count - freelist_count) * page_size`: the real on-disk cost of rows and indexes,
  read in O(1)), checked at open and after every `evict_every` rows put or moved. Over the
  bound, one batch of the least recently used rows (all fingerprints) is deleted: the
  share of the rows that the overshoot over 90 % of the bound is of the pages in use.
  Never a loop until the pages drop: deleting rows scattered among kept ones frees no
  page, and such a loop deleted most of the store, recently used rows included. Freed
  pages are reused; `vacuum()` gives them back to the file system.
- Bad files: a file that is not SQLite or is corrupt is renamed `<name>.corrupt-<time>`,
  a SQLite file of someone else (other application id or schema) `<name>.foreign-<time>`,
  a lazyembed store with a newer schema `<name>.newer-<time>` (with its -wal/-shm), with a
  `CacheWarning` (also logged), and a fresh store is built. The call still succeeds. A bad
  file that cannot be moved (read-only directory...) degrades to memory only, as below.
- Environment failures (read-only file or directory, full disk, I/O errors, unable to
  open) degrade this instance to memory-only caching with one warning; nothing is raised
  out of `get_many`/`put_many`. A busy store (another process holding the write lock past
  `busy_timeout`) only skips that write. Opening needs the write lock only for a new file
  or a new fingerprint; if it finds the store busy, the store stays unopened, without a
  warning, and the next call that needs it tries again. A degraded store is not retried.
- Fork: a connection is never used across fork. In the child (an `os.register_at_fork`
  hook) every cache gets fresh locks and its inherited connection is parked in the
  module-level `_INHERITED` list for the life of the process, never closed (closing it,
  which freeing it does, could touch the locks or the WAL the parent is using); the child
  opens the file again on first use.

Locks (never held together, so there is no lock order to get wrong):
- `_lock` guards the memory layer (`_mem`, `_mem_bytes`) and the memory counters. A store
  hit fills the memory layer after `_db_lock` is released, so it never replaces an entry
  already there: that one may come from a put_many newer than the row read.
- `_db_lock` guards the SQLite connection and everything about the store: `_conn`,
  `_fp_id`, `_pid`, `_inode`, degraded state, pending touches, counters of rows put since
  the last eviction check, and the store counters. One connection per instance is shared by all
  threads (`check_same_thread=False`, serialised by `_db_lock`): sqlite3 serialises a
  connection anyway, one connection keeps one page cache, and `close()` can close it from
  any thread, which thread-local connections would not allow.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import sqlite3
import sys
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lazyembed._fork import after_fork_in_child
from lazyembed.errors import CacheWarning, ConfigError, InvalidInputError

__all__ = ["SCHEMA_VERSION", "CacheWarning", "EmbeddingCache"]

FloatArray = npt.NDArray[np.float32]

log = logging.getLogger("lazyembed.cache")

SCHEMA_VERSION = 1
"""`PRAGMA user_version` of the store; a file with a higher one is moved aside."""

APPLICATION_ID = 0x4C5A454D
"""`PRAGMA application_id` ("LZEM") marking a SQLite file as a lazyembed store."""

_ENTRY_OVERHEAD = 344
_TOUCH_BATCH = 256
_MAX_SQL_VARS = 500
_EVICT_TARGET = 0.9

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS fingerprints ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, fingerprint TEXT NOT NULL UNIQUE)",
    # A rowid table (not WITHOUT ROWID): 1.5 KB rows fit in table leaves, while an index
    # b-tree would spill them to overflow pages.
    "CREATE TABLE IF NOT EXISTS embeddings ("
    " fp INTEGER NOT NULL, key BLOB NOT NULL, vector BLOB NOT NULL,"
    " last_used INTEGER NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS embeddings_key ON embeddings(fp, key)",
    "CREATE INDEX IF NOT EXISTS embeddings_last_used ON embeddings(last_used)",
)
_TABLES = {"fingerprints", "embeddings"}

# Connections a forked child inherited: referenced for the life of the process, so never
# closed (nor freed, which closes) there. See EmbeddingCache._park_inherited.
_INHERITED: list[sqlite3.Connection] = []
_LIVE: weakref.WeakSet[EmbeddingCache] = weakref.WeakSet()


@after_fork_in_child
def _after_fork_in_child() -> None:
    for cache in list(_LIVE):
        cache._reset_after_fork()


class _Corrupt(Exception):
    """Internal: the store file is not a usable lazyembed store (kind = file suffix)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def _text_key(text: str) -> bytes:
    # surrogatepass: a lone surrogate is a valid Python str and must not raise here.
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@functools.lru_cache(maxsize=64)
def _select_sql(n: int) -> str:
    return (
        "SELECT key, vector, last_used FROM embeddings"
        f" WHERE fp = ? AND key IN ({','.join('?' * n)})"
    )


def _classify(exc: BaseException) -> str:
    """'busy' (transient), 'corrupt' (move the file aside) or 'fatal' (degrade)."""
    if not isinstance(exc, sqlite3.Error):
        return "fatal"  # an OSError message holds a path, which may contain any word
    name = getattr(exc, "sqlite_errorname", "") or ""
    message = str(exc).lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in message:
        return "busy"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or any(
        s in message for s in ("not a database", "malformed", "corrupt")
    ):
        return "corrupt"
    return "fatal"


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open a connection (a module function so tests can inject failures)."""
    return sqlite3.connect(
        str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )


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
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._touch_interval = touch_interval
        self._evict_every = evict_every

        self._lock = threading.Lock()
        self._mem: OrderedDict[str, tuple[FloatArray, int]] = OrderedDict()  # (vector, cost)
        self._mem_bytes = 0
        self._mem_max = int(memory_bytes)
        self._mem_hits = 0
        self._mem_misses = 0
        self._mem_evictions = 0

        self._db_lock = threading.Lock()
        self._path = Path(sqlite_path) if sqlite_path is not None else None
        self._max_bytes = (
            int(sqlite_max_bytes) if sqlite_max_bytes is not None and sqlite_max_bytes > 0 else None
        )
        self._conn: sqlite3.Connection | None = None
        self._fp_id = 0
        self._pid = os.getpid()
        self._closed = False
        self._degraded_reason: str | None = None
        self._rebuilds = 0
        self._touch: set[bytes] = set()  # keys (of this fingerprint) to refresh
        self._puts_since_check = 0
        self._db_hits = 0
        self._db_misses = 0
        self._db_evictions = 0
        self._db_skipped = 0
        self._moved_aside: list[str] = []
        self._inode: tuple[int, int] | None = None  # the file inspected at open
        _LIVE.add(self)
        if self._path is not None:
            with self._db_lock:
                self._open_store()

    # ---- public API --------------------------------------------------------------------

    def get_many(self, texts: Sequence[str]) -> list[FloatArray | None]:
        """Cached vectors in input order (read-only float32 (dim,) arrays), None on a miss."""
        out: list[FloatArray | None] = []
        misses = 0
        with self._lock:
            mem = self._mem
            for text in texts:
                entry = mem.get(text)
                if entry is None:
                    misses += 1
                    out.append(None)
                else:
                    mem.move_to_end(text)
                    out.append(entry[0])
            self._mem_hits += len(out) - misses
            self._mem_misses += misses
        if misses and self._path is not None:
            missing = [i for i, vector in enumerate(out) if vector is None]
            self._get_from_store(texts, missing, out)
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
        if self._mem_max > 0:
            self._put_memory(texts, array)
        if self._path is not None:
            self._put_store(texts, array)

    def clear(self, *, all_fingerprints: bool = True) -> None:
        """Empty the memory layer and the store (every fingerprint's rows by default)."""
        with self._lock:
            self._mem.clear()
            self._mem_bytes = 0
        with self._db_lock:
            conn = self._usable_conn()
            if conn is None:
                return
            try:
                self._touch.clear()
                if all_fingerprints:
                    conn.execute("DELETE FROM embeddings")
                else:
                    conn.execute("DELETE FROM embeddings WHERE fp = ?", (self._fp_id,))
            except sqlite3.Error as exc:
                self._on_store_error(exc, "clear")

    def vacuum(self) -> None:
        """Give the store's free pages back to the file system (rewrites the file)."""
        with self._db_lock:
            conn = self._usable_conn()
            if conn is None:
                return
            try:
                self._flush_touches(conn)
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                self._on_store_error(exc, "vacuum")

    def close(self) -> None:
        """Write queued `last_used` refreshes and close the store; memory stays usable."""
        with self._db_lock:
            self._closed = True
            if self._pid != os.getpid():  # forked without the at-fork hook
                self._park_inherited()
                return
            conn = self._conn
            self._conn = None
            if conn is None:
                return
            try:
                self._flush_touches(conn)
            except sqlite3.Error as exc:
                log.debug("cache: could not write last_used at close: %s", exc)
            conn.close()

    def stats(self) -> dict[str, Any]:
        """Counters and sizes for `get_memory_usage()`, /metrics and `lazyembed cache stats`.

        `sqlite_bytes` is the bytes of pages in use (what `sqlite_max_bytes` bounds);
        `sqlite_file_bytes` is the database plus its WAL on disk.
        """
        with self._lock:
            report: dict[str, Any] = {
                "fingerprint": self.fingerprint,
                "memory_hits": self._mem_hits,
                "memory_misses": self._mem_misses,
                "memory_entries": len(self._mem),
                "memory_bytes": self._mem_bytes,
                "memory_max_bytes": self._mem_max,
                "memory_evictions": self._mem_evictions,
            }
        with self._db_lock:
            report.update(
                {
                    "sqlite_enabled": self._path is not None,
                    "sqlite_path": str(self._path) if self._path is not None else None,
                    "sqlite_hits": self._db_hits,
                    "sqlite_misses": self._db_misses,
                    "sqlite_evictions": self._db_evictions,
                    "sqlite_skipped_writes": self._db_skipped,
                    "sqlite_max_bytes": self._max_bytes,
                    "sqlite_entries": None,
                    "sqlite_entries_all_fingerprints": None,
                    "sqlite_bytes": None,
                    "sqlite_file_bytes": None,
                    "moved_aside": list(self._moved_aside),
                    "degraded": self._degraded_reason is not None,
                    "degraded_reason": self._degraded_reason,
                }
            )
            conn = self._usable_conn()
            if conn is not None:
                try:
                    row = conn.execute(
                        "SELECT count(*) FROM embeddings WHERE fp = ?", (self._fp_id,)
                    ).fetchone()
                    report["sqlite_entries"] = int(row[0])
                    row = conn.execute("SELECT count(*) FROM embeddings").fetchone()
                    report["sqlite_entries_all_fingerprints"] = int(row[0])
                    report["sqlite_bytes"] = self._used_bytes(conn)
                    report["sqlite_file_bytes"] = self._file_bytes()
                except sqlite3.Error as exc:
                    self._on_store_error(exc, "stats")
        hits = report["memory_hits"] + report["sqlite_hits"]
        lookups = report["memory_hits"] + report["memory_misses"]
        # A text missed by memory is looked up in the store, so final misses are the
        # store's misses when the store answered and the memory misses otherwise.
        misses = lookups - hits
        report["hits"] = hits
        report["misses"] = misses
        report["lookups"] = lookups
        report["hit_rate"] = hits / lookups if lookups else 0.0
        return report

    # ---- memory layer --------------------------------------------------------------------

    def _put_memory(self, texts: Sequence[str], array: FloatArray) -> None:
        entries = []
        for text, row in zip(texts, array, strict=True):
            vector = row.copy()  # own its data: a row view would pin the whole batch
            vector.flags.writeable = False
            entries.append((text, vector))
        self._insert_memory(entries, replace=True)

    def _insert_memory(self, entries: list[tuple[str, FloatArray]], *, replace: bool) -> None:
        """Add entries, then evict down to the bound. `replace` False (a store hit) keeps
        an entry already present: it may come from a put newer than the row read.

        Each entry keeps the cost it was charged, and exactly that is subtracted when it
        leaves: `sys.getsizeof(text)` grows once CPython caches a str's UTF-8 form (sqlite3
        binding, tokenizers, pickle do), so recomputing it would drift the byte count.
        """
        if self._mem_max <= 0:
            return
        getsizeof = sys.getsizeof
        with self._lock:
            mem = self._mem
            for text, vector in entries:
                if not replace and text in mem:
                    continue
                cost = vector.nbytes + getsizeof(text) + _ENTRY_OVERHEAD
                old = mem.pop(text, None)
                if old is not None:
                    self._mem_bytes -= old[1]
                if cost > self._mem_max:
                    continue
                mem[text] = (vector, cost)
                self._mem_bytes += cost
            while self._mem_bytes > self._mem_max:
                _text, (_vector, cost) = mem.popitem(last=False)
                self._mem_bytes -= cost
                self._mem_evictions += 1

    # ---- SQLite store: lookups and writes -------------------------------------------------

    def _get_from_store(
        self, texts: Sequence[str], missing: list[int], out: list[FloatArray | None]
    ) -> None:
        wanted: dict[bytes, list[int]] = {}  # a text may repeat within one call
        for i in missing:
            wanted.setdefault(_text_key(texts[i]), []).append(i)
        found: list[tuple[str, FloatArray]] = []
        nbytes = self.dim * 4
        hits = 0
        with self._db_lock:
            conn = self._usable_conn()
            if conn is None:
                return
            stale_before = int(self._clock() - self._touch_interval)
            keys = list(wanted)
            try:
                for start in range(0, len(keys), _MAX_SQL_VARS):
                    chunk = keys[start : start + _MAX_SQL_VARS]
                    sql = _select_sql(len(chunk))
                    for key, blob, last_used in conn.execute(sql, (self._fp_id, *chunk)):
                        if len(blob) != nbytes:  # not a vector of ours: recompute instead
                            continue
                        vector = np.frombuffer(blob, dtype=np.float32)  # read-only
                        positions = wanted[key]
                        for i in positions:
                            out[i] = vector
                        hits += len(positions)
                        found.append((texts[positions[0]], vector))
                        if last_used < stale_before:
                            self._touch.add(key)
                if len(self._touch) >= _TOUCH_BATCH:
                    self._after_write(conn, self._flush_touches(conn))
            except sqlite3.Error as exc:
                self._on_store_error(exc, "read")
            self._db_hits += hits
            self._db_misses += len(missing) - hits
        if found and self._mem_max > 0:
            # After the locks are released a put_many of the same text may have filled
            # memory meanwhile; replace=False keeps its (newer) vector.
            self._insert_memory(found, replace=False)

    def _put_store(self, texts: Sequence[str], array: FloatArray) -> None:
        now = int(self._clock())
        rows = [(_text_key(text), array[i].tobytes(), now) for i, text in enumerate(texts)]
        with self._db_lock:
            conn = self._usable_conn()
            if conn is None:
                return
            fp_id = self._fp_id
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(
                        "INSERT INTO embeddings(fp, key, vector, last_used) VALUES (?,?,?,?)"
                        " ON CONFLICT(fp, key) DO UPDATE SET"
                        " vector = excluded.vector, last_used = excluded.last_used",
                        [(fp_id, key, blob, used) for key, blob, used in rows],
                    )
                    moved = self._write_touches(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                self._touch.clear()
                self._after_write(conn, len(rows) + moved)
            except sqlite3.Error as exc:
                self._on_store_error(exc, "write")

    def _after_write(self, conn: sqlite3.Connection, appended: int) -> None:
        """Count rows appended to the table (put or moved by a refresh); check the bound
        every `evict_every` of them. Holds _db_lock."""
        self._puts_since_check += appended
        if self._max_bytes is not None and self._puts_since_check >= self._evict_every:
            self._puts_since_check = 0
            self._evict(conn)

    def _write_touches(self, conn: sqlite3.Connection) -> int:
        """Refresh `last_used` and move each row to the end of the table (a new rowid).

        Why the move: new rows go to the end too, so the table's order stays the LRU
        order and eviction deletes whole pages; a refreshed row left in place would pin
        a page among deleted neighbours, and the pages in use would not drop.
        """
        if not self._touch:
            return 0
        now, fp_id = int(self._clock()), self._fp_id
        conn.executemany(
            "UPDATE embeddings SET last_used = ?,"
            " rowid = (SELECT max(rowid) FROM embeddings) + 1"
            " WHERE fp = ? AND key = ?",
            [(now, fp_id, key) for key in self._touch],
        )
        return len(self._touch)

    def _flush_touches(self, conn: sqlite3.Connection) -> int:
        """Write queued `last_used` refreshes in one transaction; returns how many rows
        were queued (caller holds _db_lock)."""
        if not self._touch:
            return 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            moved = self._write_touches(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._touch.clear()
        return moved

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def _file_bytes(self) -> int:
        assert self._path is not None
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self._path}{suffix}").st_size
        return total

    def _evict(self, conn: sqlite3.Connection) -> None:
        """Over the bound, delete the least recently used rows in one batch: the share of
        the rows that the overshoot over 90 % of the bound is of the pages in use.

        Never a loop until the pages drop: rows deleted here and there free space inside
        pages but few whole pages (new rows go to the end of the table), so such a loop
        deleted far more than the overshoot, recently used rows included.
        """
        if self._max_bytes is None or self._used_bytes(conn) <= self._max_bytes:
            return
        self._flush_touches(conn)
        target = int(self._max_bytes * _EVICT_TARGET)
        conn.execute("BEGIN IMMEDIATE")
        try:
            used = self._used_bytes(conn)  # again: another process may have evicted
            deleted = 0
            if used > self._max_bytes:
                rows = int(conn.execute("SELECT count(*) FROM embeddings").fetchone()[0])
                count = -(-rows * (used - target) // used)  # rounded up: >= 1 if rows
                deleted = conn.execute(
                    "DELETE FROM embeddings WHERE rowid IN"
                    " (SELECT rowid FROM embeddings ORDER BY last_used, rowid LIMIT ?)",
                    (count,),
                ).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._db_evictions += deleted
        log.debug("cache: evicted %d rows at %d bytes (bound %d)", deleted, used, self._max_bytes)

    # ---- SQLite store: opening, bad files, degrading ----------------------------------------

    def _usable_conn(self) -> sqlite3.Connection | None:
        """The connection, opened on first use after a fork or after the store was busy at
        the last open; None when closed, degraded or (still) busy. Holds _db_lock."""
        if self._closed or self._degraded_reason is not None or self._path is None:
            return None
        if self._pid != os.getpid():  # forked without the at-fork hook (a C-level fork)
            self._pid = os.getpid()
            self._park_inherited()
        if self._conn is None:
            self._open_store()
        return self._conn

    def _park_inherited(self) -> None:
        """Drop a connection inherited across fork without closing it (Holds _db_lock).

        SQLite forbids using it in the child, and closing it there (which freeing it
        does) may release locks or checkpoint and delete the WAL the parent is using, so
        it is kept referenced in `_INHERITED` for the life of the process.
        """
        conn, self._conn = self._conn, None
        if conn is not None:
            _INHERITED.append(conn)
        self._touch.clear()  # queued by the parent, which writes them itself

    def _reset_after_fork(self) -> None:
        """In a forked child: fresh locks (a parent thread may have held one at fork), the
        inherited connection parked, the store reopened on first use."""
        self._lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._pid = os.getpid()
        self._park_inherited()
        # A parent thread may have been between two steps of an update at fork.
        self._mem_bytes = sum(cost for _vector, cost in self._mem.values())

    def _open_store(self) -> None:
        """Open (creating or rebuilding as needed). Busy: stay unopened, the next call
        tries again; any other failure degrades. Holds _db_lock."""
        assert self._path is not None
        for _attempt in range(3):
            if self._degraded_reason is not None:  # a bad file could not be moved aside
                return
            try:
                self._conn = self._open_once(self._path)
            except _Corrupt as bad:
                self._quarantine(bad.kind, str(bad))
            except (sqlite3.Error, OSError) as exc:
                kind = _classify(exc)
                if kind == "corrupt":
                    self._quarantine("corrupt", str(exc))
                elif kind == "busy":
                    # Another process holds the write lock (building the file or adding
                    # a fingerprint): transient, so neither a warning nor degrading.
                    log.debug("cache: store %s busy while opening: %s", self._path, exc)
                    return
                else:
                    self._degrade(f"cannot open {self._path}: {exc}")
                    return
            else:
                try:
                    self._evict(self._conn)
                except sqlite3.Error as exc:
                    self._on_store_error(exc, "evict")
                return
        self._degrade(f"cannot build a store at {self._path}")

    def _open_once(self, path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(path, self._busy_timeout)
        try:
            self._inode = self._stat_id(path)
            state = self._inspect(conn)
            if state != "fresh" and state != "ok":
                raise _Corrupt(state, f"{path} is not a lazyembed cache store ({state})")
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA journal_size_limit=4194304")
            if state == "fresh":
                conn.execute("BEGIN IMMEDIATE")
                try:
                    state = self._inspect(conn)  # another process may have built it meanwhile
                    if state == "fresh":
                        for statement in _SCHEMA:
                            conn.execute(statement)
                        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    elif state != "ok":
                        raise _Corrupt(state, f"{path} changed while opening ({state})")
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            self._inode = self._stat_id(path)  # the file now exists even if it was new
            select = "SELECT id FROM fingerprints WHERE fingerprint = ?"
            row = conn.execute(select, (self.fingerprint,)).fetchone()
            if row is None:  # only a new fingerprint needs the write lock at open
                conn.execute(
                    "INSERT OR IGNORE INTO fingerprints(fingerprint) VALUES (?)",
                    (self.fingerprint,),
                )
                row = conn.execute(select, (self.fingerprint,)).fetchone()
            self._fp_id = int(row[0])
            return conn
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def _inspect(conn: sqlite3.Connection) -> str:
        """'fresh', 'ok', 'newer' or 'foreign' — read before anything is written."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        names = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            ).fetchall()
        }
        if app_id == 0 and version == 0 and not names:
            return "fresh"
        if app_id != APPLICATION_ID:
            return "foreign"
        if version > SCHEMA_VERSION:
            return "newer"
        if version == SCHEMA_VERSION and names >= _TABLES:
            cols = {r[1] for r in conn.execute("PRAGMA table_info(embeddings)").fetchall()}
            if {"fp", "key", "vector", "last_used"} <= cols:
                return "ok"
        return "foreign"

    @staticmethod
    def _stat_id(path: Path) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _quarantine(self, kind: str, detail: str) -> None:
        """Rename the bad file (and its -wal/-shm) aside, unless someone already did; if it
        cannot be moved (read-only directory...), degrade: never raise out of the cache."""
        assert self._path is not None
        path = self._path
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._inode is not None and self._stat_id(path) != self._inode:
            return  # another process already moved it and built a new one: reopen that
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = path.with_name(f"{path.name}.{kind}-{stamp}")
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._degrade(f"{detail}; cannot move it aside: {exc}")
            return
        self._moved_aside.append(str(target))
        for suffix in ("-wal", "-shm"):
            try:
                os.rename(f"{path}{suffix}", f"{target}{suffix}")
            except FileNotFoundError:
                pass
            except OSError as exc:
                # A stale -wal left next to a new store would be replayed into it.
                self._degrade(f"{detail}; moved it to {target} but not its {suffix}: {exc}")
                return
        self._warn(f"embedding cache: {detail}; moved it to {target} and started a new one")

    def _degrade(self, reason: str) -> None:
        if self._degraded_reason is not None:
            return
        self._degraded_reason = reason
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._warn(f"embedding cache: persistent store disabled, memory only: {reason}")

    def _on_store_error(self, exc: sqlite3.Error, during: str) -> None:
        """Never raise out of the cache: skip, rebuild once, or degrade. Holds _db_lock."""
        kind = _classify(exc)
        if kind == "busy":
            self._db_skipped += 1
            log.debug("cache: store busy during %s, skipped: %s", during, exc)
        elif kind == "corrupt" and self._rebuilds == 0:
            self._rebuilds += 1
            self._quarantine("corrupt", f"store failed during {during}: {exc}")
            self._touch.clear()
            self._open_store()
        else:
            self._degrade(f"{during} failed: {exc}")

    @staticmethod
    def _warn(message: str) -> None:
        log.warning("%s", message)
        warnings.warn(message, CacheWarning, stacklevel=4)
