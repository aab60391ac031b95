"""File operations for a directory whose files other processes may have memory-mapped.

ONNX Runtime maps a converted model's weights file. Shrinking or rewriting a mapped file
in place makes every process that maps it die of SIGBUS on its next touch of a lost
page, so nothing here ever opens an existing cache file for writing: a new version is
written to a temporary file and renamed over the old one, and a file is removed by
renaming it aside and unlinking it. Either way the old inode lives on, intact, for as
long as somebody maps it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

_HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileStamp:
    """One version of a file: any write, truncation, rename or replacement changes it.

    ``ctime_ns`` is the part nobody can set back (``touch -r`` restores only mtime), and
    ``inode`` tells a replaced file from the one that was there before.
    """

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


def stamp(path: Path) -> FileStamp:
    st = path.stat()
    return FileStamp(
        str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
    )


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` so readers see the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide the cache from others
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove(path: Path) -> bool:
    """Rename ``path`` aside, then unlink it; False if it did not exist.

    The rename is what can fail on a read-only directory or an immutable file (the
    ``OSError`` propagates). Once renamed, the name is free for a new version even if the
    unlink then fails; a left-over ``.<name>.*.removed`` is unlinked by the next call of
    `remove_leftovers`.
    """
    aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}.removed")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError):
        aside.unlink()
    return True


def remove_leftovers(directory: Path, name: str) -> None:
    """Unlink what an interrupted `remove` of ``directory/name`` left behind."""
    for left in directory.glob(f".{name}.*.removed"):
        with contextlib.suppress(OSError):
            left.unlink()
