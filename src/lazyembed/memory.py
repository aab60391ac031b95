"""Measured process memory (psutil) and returning freed memory to the OS (glibc).

Figures here are measurements, never estimates. RSS (`process_rss_bytes`) is cheap
(~40 µs through psutil) and is what the lifecycle records around loads and unloads.
USS (`process_uss_bytes`) counts only the pages private to this process — what would
really be freed if it exited — but reads /proc/self/smaps: ~0.3 ms in a bare Python,
~1.5 ms once onnxruntime is imported (measured with timeit). So it is read for status
reports only, never per call.

Why `release_to_os` exists: after an ONNX session is dropped, glibc keeps the freed heap
pages inside the process (60 to 300 MB, DESIGN.md); ``malloc_trim(0)`` hands them back
(~13 ms including gc.collect with onnxruntime imported).

`configure_allocator` (mallopt M_TRIM_THRESHOLD=0) measured on the fp32 model, 2 threads,
3 x 96 sentences, RSS over the 75.7 MB after import (/tmp script, two runs each):
  without: loaded +123, after the work +134..+163, after close+gc +85..+115, after trim +13
  with:    loaded +103, after the work +104,       after close+gc +14,       after trim +13
so it keeps a loaded model ~30-60 MB smaller and makes unloading work even without
malloc_trim. Its CPU cost is unmeasured: the encode loop took 4.0-5.3 s without and
4.6-8.2 s with it, on a shared machine at load 6 on 2 cores, so benchmark it quietly.
Both are no-ops on non-glibc platforms (musl, macOS, Windows).

Nothing here is ONNX-specific. The cached psutil.Process is rebuilt in a forked child.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading
from typing import overload

import psutil

MB = 2**20

# glibc mallopt() parameter numbers (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

_process: psutil.Process | None = None
_libc: ctypes.CDLL | None = None
_libc_checked = False
_libc_lock = threading.Lock()  # guards the one-time glibc detection


def _reset_after_fork() -> None:
    global _process
    _process = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


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


def mb_to_bytes(mb: float) -> int:
    return int(mb * MB)


def glibc() -> ctypes.CDLL | None:
    """The process's glibc (for malloc_trim/mallopt), or None on any other libc."""
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
                        candidate.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                        candidate.mallopt.restype = ctypes.c_int
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


_allocator_configured = False


def configure_allocator(trim_threshold: int = 0) -> bool:
    """Make glibc return freed top-of-heap memory at once (mallopt M_TRIM_THRESHOLD).

    Without it, the heap grows to the peak of each inference and stays there until the
    next trim. Idempotent; returns True if applied (glibc only). Note: setting the trim
    threshold also freezes glibc's dynamic mmap threshold at its default (128 KiB), so
    large arrays go to mmap and are returned when freed, which is what we want here.
    """
    global _allocator_configured
    lib = glibc()
    if lib is None:
        return False
    if not _allocator_configured:
        _allocator_configured = bool(lib.mallopt(M_TRIM_THRESHOLD, trim_threshold))
    return _allocator_configured
