"""Measured process memory (psutil) and returning freed memory to the OS (glibc).

Figures here are measurements, never estimates. RSS (`process_rss_bytes`) is cheap and
is what the lifecycle records around loads and unloads. USS (`process_uss_bytes`) counts
only the pages private to this process — what would really be freed if it exited — but
reads /proc/self/smaps, so it is read for status reports only, never per call.

`release_to_os` exists because glibc keeps the freed heap pages of a dropped ONNX session
inside the process; ``malloc_trim(0)`` hands them back. `trim_heap` does the same after
big batches. A process-wide ``mallopt(M_TRIM_THRESHOLD, 0)`` was measured and rejected:
every batch would fault its pages in again (docs/ARCHITECTURE.md, "Memory and files").
Both are no-ops on non-glibc platforms (musl, macOS, Windows). The cached psutil.Process
is rebuilt in a forked child.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
from typing import overload

import psutil

from lazyembed._fork import after_fork_in_child

MB = 2**20

_process: psutil.Process | None = None
_libc: ctypes.CDLL | None = None
_libc_checked = False
_libc_lock = threading.Lock()  # guards the one-time glibc detection


@after_fork_in_child
def _reset_after_fork() -> None:
    global _process
    _process = None


def _proc() -> psutil.Process:
    global _process
    process = _process
    if process is None:
        process = _process = psutil.Process()
    return process


def process_rss_bytes() -> int:
    """Resident set size of this process, in bytes."""
    return int(_proc().memory_info().rss)


def process_uss_bytes() -> int | None:
    """Unique set size (private pages) in bytes; None where the OS cannot tell.

    Costs ~1 ms (reads smaps); call it for reports, not per request.
    """
    try:
        return int(_proc().memory_full_info().uss)
    except (psutil.AccessDenied, AttributeError, NotImplementedError):
        return None


@overload
def to_mb(nbytes: float) -> float: ...
@overload
def to_mb(nbytes: None) -> None: ...
@overload
def to_mb(nbytes: float | None) -> float | None: ...


def to_mb(nbytes: float | None) -> float | None:
    """Bytes → MiB rounded to 0.01; None (a figure the OS cannot give) stays None."""
    if nbytes is None:
        return None
    return round(nbytes / MB, 2)


def glibc() -> ctypes.CDLL | None:
    """The process's glibc (for malloc_trim), or None on any other libc."""
    global _libc, _libc_checked
    if _libc_checked:
        return _libc
    with _libc_lock:
        if not _libc_checked:
            lib: ctypes.CDLL | None = None
            if sys.platform.startswith("linux"):
                try:
                    candidate = ctypes.CDLL(None)  # symbols already loaded into the process
                    if hasattr(candidate, "gnu_get_libc_version") and hasattr(
                        candidate, "malloc_trim"
                    ):
                        candidate.malloc_trim.argtypes = [ctypes.c_size_t]
                        candidate.malloc_trim.restype = ctypes.c_int
                        lib = candidate
                except OSError:
                    lib = None
            _libc = lib
            _libc_checked = True
    return _libc


def release_to_os() -> bool:
    """Collect garbage, then give freed heap pages back to the OS (glibc malloc_trim).

    Returns True if malloc_trim ran. Takes ~1 to 20 ms (gc + trim); call it after unloading,
    not per request.
    """
    gc.collect()
    lib = glibc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True


def trim_heap() -> bool:
    """glibc malloc_trim(0) without a gc pass: cheap, for after big batches."""
    lib = glibc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True
