"""The SQLite file of the embedding cache: its schema, how it is opened, one write transaction.

Everything here is about one connection and the file under it; the policy of what to do
when something fails (skip, move the file aside, degrade) is the store's
(`sqlite_store.py`). `_BadStoreFile` says the file is not a usable lazyembed store.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SCHEMA_VERSION = 1
"""`PRAGMA user_version` of the store; a file with a higher one is moved aside."""

APPLICATION_ID = 0x4C5A454D
"""`PRAGMA application_id` ("LZEM") marking a SQLite file as a lazyembed store."""

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
_HEADER_BYTES = 100  # a SQLite file that was ever written holds at least its header

ErrorKind = Literal["busy", "damaged", "fatal"]
FileChange = Literal["deleted", "replaced", "truncated"]


class _BadStoreFile(Exception):
    """The file is not a usable lazyembed store (`kind` names the aside file).

    Private: only `SQLiteStore._open` sees it, and moves the file aside (or degrades the
    cache) instead of raising; no caller of lazyembed ever gets one.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def classify(exc: BaseException) -> ErrorKind:
    """'busy' (transient: skip), 'damaged' (move the file aside, rebuild) or 'fatal'.

    A file that lost its schema under a running connection (truncated, tables dropped)
    reports "no such table": damaged, like a corrupt one.
    """
    if not isinstance(exc, sqlite3.Error):
        return "fatal"  # an OSError message holds a path, which may contain any word
    name = getattr(exc, "sqlite_errorname", "") or ""
    message = str(exc).lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in message:
        return "busy"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or any(
        s in message for s in ("not a database", "malformed", "corrupt", "no such table")
    ):
        return "damaged"
    return "fatal"


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` when the body raises.

    Busy policy, the same for every write: BEGIN IMMEDIATE takes the write lock up front,
    so it is the only statement that waits for another process; SQLite retries it for
    the connection's busy timeout, then raises SQLITE_BUSY, which `classify` calls 'busy'
    and the store answers by skipping that write (never a retry loop of its own). Inside
    the transaction no statement can be busy in WAL mode.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # keep the original error
                conn.execute("ROLLBACK")
        raise


@functools.lru_cache(maxsize=64)
def select_sql(n: int) -> str:
    return (
        "SELECT key, vector, last_used FROM embeddings"
        f" WHERE fp = ? AND key IN ({','.join('?' * n)})"
    )


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the pages in use: the real on-disk cost of rows and indexes, in O(1)."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page_size)


def inspect(conn: sqlite3.Connection) -> str:
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


def prepare(conn: sqlite3.Connection, path: Path, fingerprint: str) -> int:
    """Check or build the schema on a new connection; returns the fingerprint's id.

    Raises `_BadStoreFile` for a file that is not ours. Needs the write lock only for a new
    file or a new fingerprint.
    """
    state = inspect(conn)
    if state not in ("fresh", "ok"):
        raise _BadStoreFile(state, f"{path} is not a lazyembed cache store ({state})")
    conn.execute("PRAGMA journal_mode=WAL").fetchone()
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA journal_size_limit=4194304")
    if state == "fresh":
        with write_transaction(conn):
            state = inspect(conn)  # another process may have built it meanwhile
            if state == "fresh":
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif state != "ok":
                raise _BadStoreFile(state, f"{path} changed while opening ({state})")
    select = "SELECT id FROM fingerprints WHERE fingerprint = ?"
    row = conn.execute(select, (fingerprint,)).fetchone()
    if row is None:
        with write_transaction(conn):
            conn.execute(
                "INSERT OR IGNORE INTO fingerprints(fingerprint) VALUES (?)", (fingerprint,)
            )
        row = conn.execute(select, (fingerprint,)).fetchone()
    return int(row[0])


@dataclass
class FileIdentity:
    """The file a connection was opened on, to notice when the path stops naming it."""

    dev: int
    ino: int
    had_header: bool  # the file was seen holding at least a SQLite header

    @classmethod
    def of(cls, path: Path) -> FileIdentity | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(st.st_dev, st.st_ino, st.st_size >= _HEADER_BYTES)

    def same_file(self, other: FileIdentity | None) -> bool:
        return other is not None and (other.dev, other.ino) == (self.dev, self.ino)

    def change(self, path: Path) -> FileChange | None:
        """What happened to the file at `path` since: one `os.stat`, no I/O on the file.

        A file that once held a header and now holds less was truncated: nothing
        lazyembed or SQLite does shrinks a database below one page (a VACUUM keeps
        page 1). A stat that fails for another reason (permissions) reports nothing.
        """
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "deleted"
        except OSError:
            return None
        if (st.st_dev, st.st_ino) != (self.dev, self.ino):
            return "replaced"
        if st.st_size < _HEADER_BYTES:
            return "truncated" if self.had_header else None
        self.had_header = True
        return None
