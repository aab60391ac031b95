"""Measured memory: RSS/USS read from the OS, and freed heap really returned (glibc)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lazyembed import memory

GLIBC = memory.glibc() is not None


def test_rss_and_uss_are_measured() -> None:
    rss = memory.process_rss_bytes()
    uss = memory.process_uss_bytes()
    assert rss > 10 * memory.MB
    assert uss is None or 0 < uss <= rss * 1.05


def test_rss_follows_touched_memory() -> None:
    before = memory.process_rss_bytes()
    block = bytearray(64 * memory.MB)  # zero-filled by the allocator: pages touched below
    for i in range(0, len(block), 4096):
        block[i] = 1
    grown = memory.process_rss_bytes() - before
    del block
    assert grown > 48 * memory.MB


def test_mb_helpers() -> None:
    assert memory.to_mb(3 * memory.MB) == 3.0
    assert memory.to_mb(None) is None


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc only")
def test_release_to_os_returns_fragmented_heap_pages() -> None:
    """Small malloc'd blocks kept alive here and there pin freed heap pages in the process
    (no automatic trim: they are not at the top of the heap) until malloc_trim(0)."""
    code = """
import json, sys
sys.path.insert(0, {src!r})
from lazyembed import memory
blocks = [bytes(2000) + bytes([i % 251]) for i in range(40_000)]  # ~80 MB of heap
keep = blocks[::50]
base = memory.process_rss_bytes()
del blocks
memory.gc.collect()
after_free = memory.process_rss_bytes()
trimmed = memory.release_to_os()
after_trim = memory.process_rss_bytes()
print(json.dumps([base, after_free, after_trim, trimmed, len(keep)]))
""".format(src=os.path.join(os.path.dirname(__file__), "..", "src"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base, after_free, after_trim, trimmed, _ = json.loads(out.stdout)
    assert trimmed is True
    assert base - after_free < 20 * memory.MB  # free() alone keeps the pages
    assert after_free - after_trim > 40 * memory.MB  # malloc_trim gives them back


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_measures_itself() -> None:
    memory.process_rss_bytes()  # cache the parent's psutil.Process
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ok = memory._proc().pid == os.getpid() and memory.process_rss_bytes() > 0
            os.write(write_end, b"1" if ok else b"0")
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read_end, 1)
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0 and answer == b"1"
