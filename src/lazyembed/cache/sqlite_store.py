"""The persistent layer of the embedding cache: one SQLite file (WAL) shared by processes.

One row per (fingerprint id, 16-byte text key) holding the float32 bytes and a `last_used`
time in whole seconds. Durability: WAL with `synchronous=NORMAL`: every entry whose
`put_many` returned survives a crash of the process (SIGKILL included); a power loss can
lose the last commits since the last checkpoint, but the file stays consistent.

- Hits do not become writes: `last_used` is refreshed only for rows older than
  `touch_interval`, queued and written in one batch (with the next put, every
  `_TOUCH_BATCH` queued rows, or at close). A refreshed row moves to the end of the table
  (a new rowid), where new rows go too, so the table's order follows the LRU order and
  eviction frees whole pages.
- Bound: `max_bytes` is compared with the bytes of the pages in use, at open and after
  every `evict_every` rows appended; over it, one batch of the least recently used rows
  (all fingerprints) is deleted — never a loop until the pages drop (see `_evict`).
- Bad files (not SQLite, corrupt, someone else's, a newer schema) are moved aside
  (`quarantine.py`) with a `CacheWarning` and a fresh store is built; the call succeeds.
- Damaged while running: before every write one `os.stat` checks that the path still
  names the open file. Deleted or replaced (another process moved a bad file aside): the
  store reopens whatever the path names now; truncated (or an error says the file is
  damaged): it is moved aside and rebuilt. One warning each time, nothing raised.
- Environment failures (read-only location, full disk, I/O errors) degrade to memory
  only with one warning; a busy store (another process holding the write lock past
  `busy_timeout`) only skips that write, or leaves the store unopened until the next call.
- Fork: a connection is never used across fork; the child parks the inherited one in
  `_INHERITED` for the life of the process (closing it could touch the parent's locks or
  WAL) and opens the file again on first use.

`_lock` guards the connection and all state here. One connection per store is shared by
all threads (`check_same_thread=False`): one page cache, and `close()` works from any
thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lazyembed._fork import after_fork_in_child
from lazyembed.cache.memory_lru import FloatArray
from lazyembed.cache.quarantine import _SidecarNotMoved, move_aside, remove_orphan_sidecars
from lazyembed.cache.sqlite_schema import (
    FileChange,
    FileIdentity,
    _BadStoreFile,
    classify,
    prepare,
    select_sql,
    used_bytes,
    write_transaction,
)
from lazyembed.errors import CacheWarning

log = logging.getLogger("lazyembed.cache")

_TOUCH_BATCH = 256
_MAX_SQL_VARS = 500
_EVICT_TARGET = 0.9
_MAX_REBUILDS = 3  # damaged files moved aside by one store before it gives up (degrades)

T = TypeVar("T")

DISABLED_STATS: dict[str, Any] = {
    "sqlite_enabled": False,
    "sqlite_path": None,
    "sqlite_hits": 0,
    "sqlite_misses": 0,
    "sqlite_evictions": 0,
    "sqlite_skipped_writes": 0,
    "sqlite_max_bytes": None,
    "sqlite_entries": None,
    "sqlite_entries_all_fingerprints": None,
    "sqlite_bytes": None,
    "sqlite_file_bytes": None,
    "moved_aside": [],
    "degraded": False,
    "degraded_reason": None,
}
"""The store's part of `EmbeddingCache.stats()` when there is no store."""

# Connections a forked child inherited: referenced for the life of the process, so never
# closed (nor freed, which closes) there. See SQLiteStore._park_inherited.
_INHERITED: list[sqlite3.Connection] = []
_LIVE: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()


@after_fork_in_child
def _after_fork_in_child() -> None:
    for store in list(_LIVE):
        store.reset_after_fork()


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open a connection (a module function so tests can inject failures)."""
    return sqlite3.connect(
        str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )


class SQLiteStore:
    """Vectors of one fingerprint by text key in a SQLite file; never raises a store failure."""

    def __init__(
        self,
        path: Path,
        fingerprint: str,
        *,
        dim: int,
        max_bytes: int | None = None,
        busy_timeout: float = 5.0,
        touch_interval: float = 3600.0,
        evict_every: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.dim = dim
        self.max_bytes = max_bytes
        self._busy_timeout = busy_timeout
        self._touch_interval = touch_interval
        self._evict_every = evict_every
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._identity: FileIdentity | None = None  # the file the connection is on
        self._fp_id = 0
        self._pid = os.getpid()
        self._closed = False
        self._degraded_reason: str | None = None
        self._rebuilds = 0
        self._touch: set[bytes] = set()  # keys (of this fingerprint) to refresh
        self._appended_since_check = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._skipped = 0
        self._moved_aside: list[str] = []
        _LIVE.add(self)
        with self._lock:
            self._open()

    # ---- public API --------------------------------------------------------------------

    def get_many(self, keys: Sequence[bytes]) -> list[FloatArray | None]:
        """Read-only vectors in key order; None on a miss or when the store is unusable."""
        wanted: dict[bytes, list[int]] = {}  # a key may repeat within one call
        for i, key in enumerate(keys):
            wanted.setdefault(key, []).append(i)
        out: list[FloatArray | None] = [None] * len(keys)
        self._run("read", lambda conn: self._read(conn, wanted, out))
        return out

    def put_many(self, keys: Sequence[bytes], array: FloatArray) -> None:
        """Store row i of `array` under keys[i]; the last put wins."""
        now = int(self._clock())
        rows = [(key, array[i].tobytes(), now) for i, key in enumerate(keys)]
        self._run("write", lambda conn: self._write(conn, rows), check_file=True)

    def clear(self, *, all_fingerprints: bool) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            self._touch.clear()
            with write_transaction(conn):
                if all_fingerprints:
                    conn.execute("DELETE FROM embeddings")
                else:
                    conn.execute("DELETE FROM embeddings WHERE fp = ?", (self._fp_id,))

        self._run("clear", delete, check_file=True)

    def vacuum(self) -> None:
        """Give the free pages back to the file system (rewrites the file)."""

        def vacuum(conn: sqlite3.Connection) -> None:
            self._flush_touches(conn)
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        self._run("vacuum", vacuum, check_file=True)

    def close(self) -> None:
        """Write queued `last_used` refreshes and close the connection for good."""
        with self._lock:
            self._closed = True
            if self._pid != os.getpid():  # forked without the at-fork hook
                self._park_inherited()
                return
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                self._flush_touches(conn)
            except sqlite3.Error as exc:
                log.debug("cache: could not write last_used at close: %s", exc)
            conn.close()

    def stats(self) -> dict[str, Any]:
        """Counters and sizes; `sqlite_bytes` is the bytes of pages in use (what `max_bytes`
        bounds), `sqlite_file_bytes` the database plus its WAL on disk."""
        with self._lock:
            report: dict[str, Any] = {
                **DISABLED_STATS,
                "sqlite_enabled": True,
                "sqlite_path": str(self.path),
                "sqlite_hits": self._hits,
                "sqlite_misses": self._misses,
                "sqlite_evictions": self._evictions,
                "sqlite_skipped_writes": self._skipped,
                "sqlite_max_bytes": self.max_bytes,
                "moved_aside": list(self._moved_aside),
                "degraded": self._degraded_reason is not None,
                "degraded_reason": self._degraded_reason,
            }
        sizes = self._run("stats", self._sizes)
        if sizes is not None:
            report.update(sizes)
        return report

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock (a parent thread may have held it at fork) and
        the inherited connection parked; the file is opened again on first use."""
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._park_inherited()

    # ---- one operation under the lock, and what a failure does --------------------------

    def _run(
        self, during: str, op: Callable[[sqlite3.Connection], T], *, check_file: bool = False
    ) -> T | None:
        """`op(connection)` under the lock; None when the store is unusable or `op` failed.

        `check_file` (writes): first make sure the path still names the open file, so a
        write never goes to a deleted, replaced or truncated file.
        """
        with self._lock:
            conn = self._usable_conn()
            if conn is not None and check_file:
                conn = self._follow_file()
            if conn is None:
                return None
            try:
                return op(conn)
            except sqlite3.Error as exc:
                self._on_error(exc, during)
                return None

    def _usable_conn(self) -> sqlite3.Connection | None:
        """The connection, opened on first use after a fork or after the store was busy at
        the last open; None when closed, degraded or (still) busy."""
        if self._closed or self._degraded_reason is not None:
            return None
        if self._pid != os.getpid():  # forked without the at-fork hook (a C-level fork)
            self._pid = os.getpid()
            self._park_inherited()
        if self._conn is None:
            self._open()
        return self._conn

    def _follow_file(self) -> sqlite3.Connection | None:
        """One `os.stat`: reopen when the file under the connection left the path."""
        change = self._identity.change(self.path) if self._identity is not None else None
        if change is not None:
            self._recover(change, f"store {self.path} was {change} while in use")
        return self._conn

    def _on_error(self, exc: sqlite3.Error, during: str) -> None:
        """Never raise out of the cache: skip, follow the path, rebuild, or degrade."""
        kind = classify(exc)
        if kind == "busy":
            self._skipped += 1
            log.debug("cache: store busy during %s, skipped: %s", during, exc)
            return
        change = self._identity.change(self.path) if self._identity is not None else None
        if change is not None:
            self._recover(change, f"store {self.path} was {change} ({during} failed: {exc})")
        elif kind == "damaged":
            self._rebuild(f"store failed during {during}: {exc}")
        else:
            self._degrade(f"{during} failed: {exc}")

    def _recover(self, change: FileChange, detail: str) -> None:
        """The open file is no longer the store at the path. Truncated: move it aside and
        rebuild. Deleted or replaced: open what the path names now (a new store if
        nothing); closing the old connection is safe, SQLite neither checkpoints into nor
        deletes the WAL of a file that has moved."""
        if change == "truncated":
            self._rebuild(detail)
            return
        self._drop_connection()
        if change == "deleted":
            remove_orphan_sidecars(self.path)
        self._warn(f"embedding cache: {detail}; opened {self.path} again")
        self._open()

    def _rebuild(self, detail: str) -> None:
        self._rebuilds += 1
        if self._rebuilds > _MAX_REBUILDS:
            self._degrade(f"{detail} (damaged {self._rebuilds} times)")
            return
        self._quarantine("corrupt", detail)
        self._open()

    # ---- reading and writing -------------------------------------------------------------

    def _read(
        self,
        conn: sqlite3.Connection,
        wanted: dict[bytes, list[int]],
        out: list[FloatArray | None],
    ) -> None:
        nbytes = self.dim * 4
        stale_before = int(self._clock() - self._touch_interval)
        keys = list(wanted)
        hits = 0
        try:
            for start in range(0, len(keys), _MAX_SQL_VARS):
                chunk = keys[start : start + _MAX_SQL_VARS]
                sql = select_sql(len(chunk))
                for key, blob, last_used in conn.execute(sql, (self._fp_id, *chunk)):
                    if len(blob) != nbytes:  # not a vector of ours: recompute instead
                        continue
                    vector = np.frombuffer(blob, dtype=np.float32)  # read-only
                    positions = wanted[key]
                    for i in positions:
                        out[i] = vector
                    hits += len(positions)
                    if last_used < stale_before:
                        self._touch.add(key)
        finally:
            self._hits += hits
            self._misses += len(out) - hits
        if len(self._touch) >= _TOUCH_BATCH:
            self._after_append(conn, self._flush_touches(conn))

    def _write(self, conn: sqlite3.Connection, rows: list[tuple[bytes, bytes, int]]) -> None:
        fp_id = self._fp_id
        with write_transaction(conn):
            conn.executemany(
                "INSERT INTO embeddings(fp, key, vector, last_used) VALUES (?,?,?,?)"
                " ON CONFLICT(fp, key) DO UPDATE SET"
                " vector = excluded.vector, last_used = excluded.last_used",
                [(fp_id, key, blob, used) for key, blob, used in rows],
            )
            moved = self._write_touches(conn)
        self._touch.clear()
        self._after_append(conn, len(rows) + moved)

    def _after_append(self, conn: sqlite3.Connection, appended: int) -> None:
        """Count rows appended to the table (put or moved by a refresh); check the bound
        every `evict_every` of them."""
        self._appended_since_check += appended
        if self.max_bytes is not None and self._appended_since_check >= self._evict_every:
            self._appended_since_check = 0
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
        """Write queued refreshes in one transaction; returns how many were queued."""
        if not self._touch:
            return 0
        with write_transaction(conn):
            moved = self._write_touches(conn)
        self._touch.clear()
        return moved

    def _evict(self, conn: sqlite3.Connection) -> None:
        """Over the bound, delete the least recently used rows in one batch: the share of
        the rows that the overshoot over 90 % of the bound is of the pages in use.

        Never a loop until the pages drop: rows deleted here and there free space inside
        pages but few whole pages (new rows go to the end of the table), so such a loop
        deleted far more than the overshoot, recently used rows included.
        """
        if self.max_bytes is None or used_bytes(conn) <= self.max_bytes:
            return
        self._flush_touches(conn)
        target = int(self.max_bytes * _EVICT_TARGET)
        deleted = 0
        with write_transaction(conn):
            used = used_bytes(conn)  # again: another process may have evicted
            if used > self.max_bytes:
                rows = int(conn.execute("SELECT count(*) FROM embeddings").fetchone()[0])
                count = -(-rows * (used - target) // used)  # rounded up: >= 1 if rows
                deleted = conn.execute(
                    "DELETE FROM embeddings WHERE rowid IN"
                    " (SELECT rowid FROM embeddings ORDER BY last_used, rowid LIMIT ?)",
                    (count,),
                ).rowcount
        self._evictions += deleted
        log.debug("cache: evicted %d rows at %d bytes (bound %d)", deleted, used, self.max_bytes)

    def _sizes(self, conn: sqlite3.Connection) -> dict[str, Any]:
        select = "SELECT count(*) FROM embeddings"
        mine = conn.execute(f"{select} WHERE fp = ?", (self._fp_id,)).fetchone()[0]
        everyone = conn.execute(select).fetchone()[0]
        file_bytes = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                file_bytes += os.stat(f"{self.path}{suffix}").st_size
        return {
            "sqlite_entries": int(mine),
            "sqlite_entries_all_fingerprints": int(everyone),
            "sqlite_bytes": used_bytes(conn),
            "sqlite_file_bytes": file_bytes,
        }

    # ---- opening, bad files, degrading ---------------------------------------------------

    def _open(self) -> None:
        """Open (creating or rebuilding as needed). Busy: stay unopened, the next call
        tries again; any other failure degrades."""
        for _attempt in range(3):
            if self._degraded_reason is not None:  # a bad file could not be moved aside
                return
            try:
                self._conn = self._connect_and_prepare()
            except _BadStoreFile as bad:
                self._quarantine(bad.kind, str(bad))
            except (sqlite3.Error, OSError) as exc:
                kind = classify(exc)
                if kind == "damaged":
                    self._quarantine("corrupt", str(exc))
                elif kind == "busy":
                    # Another process holds the write lock (building the file or adding
                    # a fingerprint): transient, so neither a warning nor degrading.
                    log.debug("cache: store %s busy while opening: %s", self.path, exc)
                    return
                else:
                    self._degrade(f"cannot open {self.path}: {exc}")
                    return
            else:
                self._touch.clear()
                self._appended_since_check = 0
                try:
                    self._evict(self._conn)
                except sqlite3.Error as exc:
                    self._on_error(exc, "evict")
                return
        self._degrade(f"cannot build a store at {self.path}")

    def _connect_and_prepare(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path, self._busy_timeout)
        try:
            self._identity = FileIdentity.of(self.path)  # what a bad file is, to move it
            self._fp_id = prepare(conn, self.path, self.fingerprint)
            self._identity = FileIdentity.of(self.path)  # it now exists even if it was new
            return conn
        except BaseException:
            conn.close()
            raise

    def _quarantine(self, kind: str, detail: str) -> None:
        """Move the bad file (and its -wal/-shm) aside, unless someone already did; if it
        cannot be moved (read-only directory...), degrade: never raise out of the cache."""
        self._drop_connection()
        if self._identity is not None and not self._identity.same_file(FileIdentity.of(self.path)):
            return  # another process already moved it and built a new one: reopen that
        try:
            target = move_aside(self.path, kind)
        except _SidecarNotMoved as exc:
            # A stale -wal left next to a new store would be replayed into it.
            self._moved_aside.append(str(exc.target))
            self._degrade(f"{detail}; {exc}")
            return
        except OSError as exc:
            self._degrade(f"{detail}; cannot move it aside: {exc}")
            return
        if target is None:
            return
        self._moved_aside.append(str(target))
        self._warn(f"embedding cache: {detail}; moved it to {target} and started a new one")

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._touch.clear()  # keys of the file being left
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _park_inherited(self) -> None:
        """Drop a connection inherited across fork without closing it.

        SQLite forbids using it in the child, and closing it there (which freeing it
        does) may release locks or checkpoint and delete the WAL the parent is using, so
        it is kept referenced in `_INHERITED` for the life of the process.
        """
        conn, self._conn = self._conn, None
        if conn is not None:
            _INHERITED.append(conn)
        self._touch.clear()  # queued by the parent, which writes them itself

    def _degrade(self, reason: str) -> None:
        if self._degraded_reason is not None:
            return
        self._degraded_reason = reason
        self._drop_connection()
        self._warn(f"embedding cache: persistent store disabled, memory only: {reason}")

    @staticmethod
    def _warn(message: str) -> None:
        log.warning("%s", message)
        warnings.warn(message, CacheWarning, stacklevel=5)
