"""sha256 of the source weights, remembered per file version in ``hash-index.json``.

Hashing 90 MB costs 50-100 ms; the index, keyed by (path, size, mtime), makes that a
one-time cost per file version. A failure to read or write the index only costs a
re-hash, never correctness. ``<cache_dir>/hash-index.json.lock`` (a ``filelock``) guards
its read-modify-write.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from filelock import FileLock

from lazyembed.models.files import atomic_write_bytes, sha256_file

logger = logging.getLogger("lazyembed")

INDEX_FILE = "hash-index.json"
_INDEX_MAX_ENTRIES = 256
_LOCK_TIMEOUT_S = 600.0


def cached_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of ``path``, from the index when this version of the file was hashed before."""
    st = path.stat()
    abs_path = str(path.resolve())
    key = f"{abs_path}|{st.st_size}|{st.st_mtime_ns}"
    index_path = cache_dir / INDEX_FILE
    with contextlib.suppress(OSError, ValueError, AttributeError):
        entries = json.loads(index_path.read_text(encoding="utf-8")).get("entries", {})
        cached = entries.get(key)
        if isinstance(cached, str) and len(cached) == 64:
            return cached
    sha = sha256_file(path)
    try:
        with FileLock(str(index_path) + ".lock", timeout=_LOCK_TIMEOUT_S):
            _record(index_path, abs_path, key, sha)
    except OSError as exc:
        logger.warning("could not update hash index %s: %s", index_path, exc)
    return sha


def _record(index_path: Path, abs_path: str, key: str, sha: str) -> None:
    try:
        loaded = json.loads(index_path.read_text(encoding="utf-8"))
        entries = loaded.get("entries", {}) if isinstance(loaded, dict) else {}
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        entries = {}
    # Drop older versions of the same file; keep the index bounded.
    entries = {
        k: v for k, v in entries.items() if isinstance(v, str) and k.split("|")[0] != abs_path
    }
    entries[key] = sha
    if len(entries) > _INDEX_MAX_ENTRIES:
        entries = dict(list(entries.items())[-_INDEX_MAX_ENTRIES:])
    payload = json.dumps({"version": 1, "entries": entries}, indent=0)
    atomic_write_bytes(index_path, payload.encode("utf-8"))
