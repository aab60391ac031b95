"""Shared helpers of the tests/test_cache*.py files (random vectors, bad files, connections)."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cache_child import DIM
from lazyembed.cache import SCHEMA_VERSION, EmbeddingCache

CHILD = Path(__file__).with_name("cache_child.py")


def spawn(*args: str) -> subprocess.Popen[str]:
    """Run cache_child.py with `args` (see its docstring), its stdout a text pipe."""
    return subprocess.Popen([sys.executable, str(CHILD), *args], stdout=subprocess.PIPE, text=True)


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)


def texts(n: int, prefix: str = "t") -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def entry_cost(text: str) -> int:
    """The memory an entry is charged, measured through the cache itself."""
    cache = EmbeddingCache("fp", memory_bytes=1 << 20)
    cache.put_many([text], vectors(1))
    cost: int = cache.stats()["memory_bytes"]
    return cost


def assert_same(got: np.ndarray | None, want: np.ndarray) -> None:
    assert got is not None
    assert got.dtype == np.float32 and got.shape == (DIM,)
    assert got.tobytes() == want.tobytes()


def integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        result: str = conn.execute("PRAGMA integrity_check").fetchone()[0]
    return result


# ---- bad files ---------------------------------------------------------------------------


def make_garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(8192))


def make_wrong_schema(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('precious')")
        conn.commit()


def make_newer_version(path: Path) -> None:
    EmbeddingCache("fp", memory_bytes=0, sqlite_path=path).close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.commit()


def refuse_rename(src: object, dst: object) -> None:
    raise PermissionError(13, "Permission denied", str(src))


# ---- connections the tests can watch or break ----------------------------------------------


def connect_with(
    factory: type[sqlite3.Connection],
) -> Callable[[Path, float], sqlite3.Connection]:
    """A stand-in for the store's `_connect` opening connections of class `factory`."""

    def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
        return sqlite3.connect(
            str(path),
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            factory=factory,
        )

    return connect


class WeakReferable(sqlite3.Connection):
    """A real connection a test can hold a weak reference to (sqlite3.Connection can't)."""


weak_referable_connect = connect_with(WeakReferable)


def is_open(ref: weakref.ref[WeakReferable]) -> bool:
    conn = ref()
    if conn is None:
        return False  # freed, which closes it
    try:
        conn.in_transaction  # noqa: B018 - raises on a closed connection, does no I/O
    except sqlite3.ProgrammingError:
        return False
    return True


class MalformedOnDemand(sqlite3.Connection):
    """A real connection that reports corruption while `broken` is set."""

    broken = False

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if MalformedOnDemand.broken and sql.startswith("SELECT key"):
            raise sqlite3.DatabaseError("database disk image is malformed")
        return super().execute(sql, *args)  # type: ignore[arg-type]


malformed_on_demand_connect = connect_with(MalformedOnDemand)
