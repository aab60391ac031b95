"""Memory-pressure readers fed with recorded cgroup v2 / PSI / meminfo contents."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from lazyembed import pressure
from lazyembed.pressure import (
    PressureMonitor,
    PressureSources,
    find_cgroup_dir,
    read_pressure,
)

GIB = 1024**3

# Recorded from real hosts (numbers edited to sit on either side of the thresholds).
PSI_CALM = (
    "some avg10=0.00 avg60=0.12 avg300=0.05 total=1843203\n"
    "full avg10=0.00 avg60=0.03 avg300=0.01 total=902114\n"
)
PSI_STALLED = (
    "some avg10=37.52 avg60=12.80 avg300=3.10 total=98234112\n"
    "full avg10=21.07 avg60=7.44 avg300=1.88 total=51234987\n"
)
MEMINFO = """MemTotal:       24731708 kB
MemFree:          812344 kB
MemAvailable:    {available_kb} kB
Buffers:          162096 kB
Cached:          3011748 kB
SwapCached:            0 kB
"""
MEMORY_STAT = """anon 1503297536
file 209715200
kernel 23052288
active_anon 1400000000
inactive_anon 103297536
active_file 52428800
inactive_file {inactive}
unevictable 0
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cgroup(
    tmp_path: Path,
    *,
    max_: str = "max",
    current: int | None = None,
    high: str | None = None,
    inactive_file: int = 0,
    psi: str | None = None,
) -> Path:
    directory = tmp_path / "cg"
    directory.mkdir(exist_ok=True)
    write(directory / "cgroup.controllers", "cpu memory pids\n")
    write(directory / "memory.max", max_ + "\n")
    if high is not None:
        write(directory / "memory.high", high + "\n")
    if current is not None:
        write(directory / "memory.current", f"{current}\n")
    write(directory / "memory.stat", MEMORY_STAT.format(inactive=inactive_file))
    if psi is not None:
        write(directory / "memory.pressure", psi)
    return directory


def sources(
    tmp_path: Path,
    *,
    cgroup_dir: Path | None = None,
    system_psi: str | None = None,
    available_kb: int | None = None,
    meminfo_text: str | None = None,
) -> PressureSources:
    psi_path = tmp_path / "proc_pressure_memory"
    meminfo_path = tmp_path / "proc_meminfo"
    if system_psi is not None:
        write(psi_path, system_psi)
    if meminfo_text is not None:
        write(meminfo_path, meminfo_text)
    elif available_kb is not None:
        write(meminfo_path, MEMINFO.format(available_kb=available_kb))
    return PressureSources(cgroup_dir=cgroup_dir, system_psi=psi_path, meminfo=meminfo_path)


@pytest.fixture(autouse=True)
def _fresh_off_log(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pressure, "_OFF_LOGGED", False)


# ---- cgroup v2 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "expected"),
    [(1_900_000_000, "pressure"), (1_990_000_000, "pressure"), (1_500_000_000, None)],
)
def test_cgroup_fraction_against_threshold(
    tmp_path: Path, current: int, expected: str | None
) -> None:
    directory = cgroup(tmp_path, max_="2000000000", current=current, psi=PSI_CALM)
    monitor = PressureMonitor(
        cgroup_fraction=0.95,
        sources=sources(tmp_path, cgroup_dir=directory, available_kb=8_000_000),
    )
    # 1.9 GB / 2 GB = 0.95 exactly: at the threshold counts as pressure (>=).
    assert monitor.check() == expected
    reading = monitor.last_reading
    assert reading is not None
    assert reading.source == "cgroup"
    assert reading.cgroup_fraction == pytest.approx(current / 2_000_000_000)
    assert reading.psi_source == "cgroup"


def test_cgroup_max_means_unlimited(tmp_path: Path) -> None:
    directory = cgroup(tmp_path, max_="max", current=50 * GIB, psi=PSI_CALM)
    reading = read_pressure(sources(tmp_path, cgroup_dir=directory))
    assert reading.cgroup_fraction is None
    assert reading.cgroup_limit_mb is None
    assert reading.psi_some_avg10 == 0.0  # the cgroup still gives its PSI
    assert PressureMonitor(sources=sources(tmp_path, cgroup_dir=directory)).check() is None


def test_a_full_parent_cgroup_is_pressure_for_an_unlimited_child(tmp_path: Path) -> None:
    slice_dir = tmp_path / "user.slice"
    write(slice_dir / "memory.max", f"{GIB}\n")
    write(slice_dir / "memory.current", f"{int(0.99 * GIB)}\n")
    write(slice_dir / "memory.stat", MEMORY_STAT.format(inactive=0))
    scope = slice_dir / "app.scope"
    write(scope / "memory.max", "max\n")
    write(scope / "memory.current", f"{200 * 2**20}\n")
    write(scope / "memory.stat", MEMORY_STAT.format(inactive=0))
    reading = read_pressure(sources(tmp_path, cgroup_dir=scope))
    assert reading.source == "cgroup"
    assert reading.cgroup_fraction == pytest.approx(0.99)
    assert reading.cgroup_limit_mb == pytest.approx(1024.0)
    assert PressureMonitor(sources=sources(tmp_path, cgroup_dir=scope)).check() == "pressure"


def test_cgroup_memory_high_is_the_tighter_limit(tmp_path: Path) -> None:
    directory = cgroup(tmp_path, max_=str(4 * GIB), high=str(1 * GIB), current=int(0.99 * GIB))
    reading = read_pressure(sources(tmp_path, cgroup_dir=directory))
    assert reading.cgroup_limit_mb == pytest.approx(1024.0)
    assert PressureMonitor(sources=sources(tmp_path, cgroup_dir=directory)).check() == "pressure"


def test_reclaimable_page_cache_is_not_pressure(tmp_path: Path) -> None:
    # 1.98 GiB charged, of which 0.5 GiB is inactive page cache the kernel drops first.
    directory = cgroup(tmp_path, max_=str(2 * GIB), current=int(1.98 * GIB), inactive_file=GIB // 2)
    monitor = PressureMonitor(sources=sources(tmp_path, cgroup_dir=directory))
    assert monitor.check() is None
    reading = monitor.last_reading
    assert reading is not None and reading.cgroup_fraction is not None
    assert reading.cgroup_fraction == pytest.approx(0.74, abs=0.01)


def test_cgroup_psi_above_threshold(tmp_path: Path) -> None:
    directory = cgroup(tmp_path, psi=PSI_STALLED)
    # The system is calm, but our cgroup stalls: the cgroup's PSI is preferred.
    monitor = PressureMonitor(
        psi_avg10=10.0, sources=sources(tmp_path, cgroup_dir=directory, system_psi=PSI_CALM)
    )
    assert monitor.check() == "pressure"
    reading = monitor.last_reading
    assert reading is not None
    assert (reading.psi_some_avg10, reading.psi_source) == (37.52, "cgroup")
    assert monitor.last_trigger is not None and "PSI" in monitor.last_trigger


# ---- system PSI and MemAvailable ----------------------------------------------------------


@pytest.mark.parametrize(
    ("psi_text", "threshold", "expected"),
    [(PSI_STALLED, 10.0, "pressure"), (PSI_CALM, 10.0, None), (PSI_STALLED, 40.0, None)],
)
def test_system_psi_against_threshold(
    tmp_path: Path, psi_text: str, threshold: float, expected: str | None
) -> None:
    src = sources(tmp_path, system_psi=psi_text)
    monitor = PressureMonitor(psi_avg10=threshold, sources=src)
    assert monitor.check() == expected
    reading = monitor.last_reading
    assert reading is not None
    assert (reading.source, reading.psi_source) == ("psi", "system")


@pytest.mark.parametrize(
    ("available_kb", "expected"),
    [(100 * 1024, "pressure"), (255 * 1024, "pressure"), (256 * 1024, None), (9_000_000, None)],
)
def test_mem_available_against_threshold(
    tmp_path: Path, available_kb: int, expected: str | None
) -> None:
    monitor = PressureMonitor(
        min_available_mb=256, sources=sources(tmp_path, available_kb=available_kb)
    )
    assert monitor.check() == expected
    reading = monitor.last_reading
    assert reading is not None
    assert reading.source == "meminfo"
    assert reading.mem_available_mb == pytest.approx(available_kb / 1024)


def test_any_signal_is_enough_and_none_disables_one(tmp_path: Path) -> None:
    src = sources(tmp_path, system_psi=PSI_CALM, available_kb=10 * 1024)
    assert PressureMonitor(sources=src).check() == "pressure"
    assert PressureMonitor(min_available_mb=None, sources=src).check() is None


def test_pressure_follows_the_files_between_checks(tmp_path: Path) -> None:
    src = sources(tmp_path, system_psi=PSI_CALM, available_kb=9_000_000)
    monitor = PressureMonitor(sources=src)
    assert monitor.check() is None
    assert src.system_psi is not None
    write(src.system_psi, PSI_STALLED)
    assert monitor.check() == "pressure"
    write(src.system_psi, PSI_CALM)
    assert monitor.check() is None


# ---- missing and malformed files ----------------------------------------------------------


def test_missing_files_mean_off_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nothing = PressureSources(
        cgroup_dir=tmp_path / "no-cgroup",
        system_psi=tmp_path / "no-psi",
        meminfo=tmp_path / "no-meminfo",
    )
    with caplog.at_level(logging.INFO, logger="lazyembed"):
        first = PressureMonitor(sources=nothing)
        second = PressureMonitor(sources=nothing)
        assert first.check() is None
        assert second.check() is None
    assert not first.available
    assert not second.available
    off = [r for r in caplog.records if "pressure unloading is off" in r.getMessage()]
    assert len(off) == 1
    # Stays off even if the files appear later.
    write(tmp_path / "no-meminfo", MEMINFO.format(available_kb=1))
    assert first.check() is None
    reading = first.last_reading
    assert reading is not None and reading.source == "none"


@pytest.mark.parametrize(
    "garbage",
    ["", "some avg10=abc avg60=0 avg300=0 total=0\n", "\x00\xff binary", "full avg10=99.0\n"],
)
def test_malformed_psi_is_unavailable(tmp_path: Path, garbage: str) -> None:
    src = sources(tmp_path, system_psi=garbage, available_kb=9_000_000)
    monitor = PressureMonitor(sources=src)
    assert monitor.available  # meminfo still works
    assert monitor.check() is None
    reading = monitor.last_reading
    assert reading is not None
    assert reading.psi_some_avg10 is None
    assert reading.source == "meminfo"


def test_malformed_everything_is_off_without_exception(tmp_path: Path) -> None:
    directory = tmp_path / "cg"
    write(directory / "memory.max", "lots\n")
    write(directory / "memory.current", "-5\n")
    write(directory / "memory.pressure", "some avg10=-1\n")
    (tmp_path / "proc_pressure_memory").mkdir()  # a directory where a file should be
    src = sources(tmp_path, cgroup_dir=directory, meminfo_text="MemAvailable: many kB\n")
    monitor = PressureMonitor(sources=src)
    assert not monitor.available
    assert monitor.check() is None


def test_malformed_cgroup_current_falls_back(tmp_path: Path) -> None:
    directory = tmp_path / "cg"
    write(directory / "memory.max", f"{GIB}\n")
    write(directory / "memory.current", "n/a\n")
    reading = read_pressure(sources(tmp_path, cgroup_dir=directory, system_psi=PSI_STALLED))
    assert reading.cgroup_fraction is None
    assert reading.source == "psi"
    assert reading.as_dict()["psi_some_avg10"] == 37.52


# ---- finding the cgroup -------------------------------------------------------------------


def test_find_cgroup_dir_unified(tmp_path: Path) -> None:
    root = tmp_path / "sys_fs_cgroup"
    write(root / "cgroup.controllers", "cpu memory\n")
    write(root / "user.slice/app.scope/cgroup.controllers", "memory\n")
    proc = write(tmp_path / "cgroup", "0::/user.slice/app.scope\n")
    assert find_cgroup_dir(proc, root) == root / "user.slice/app.scope"


def test_find_cgroup_dir_hybrid_and_container(tmp_path: Path) -> None:
    root = tmp_path / "sys_fs_cgroup"
    write(root / "unified/cgroup.controllers", "")
    proc = write(tmp_path / "cgroup", "4:memory:/x\n1:cpu:/\n0::/\n")
    assert find_cgroup_dir(proc, root) == root / "unified"
    # A container without a cgroup namespace: the host path is absent, its cgroup is the root.
    other = tmp_path / "container"
    write(other / "cgroup.controllers", "memory\n")
    write(other / "memory.current", "1\n")
    proc2 = write(tmp_path / "cgroup2", "0::/docker/0123abcd\n")
    assert find_cgroup_dir(proc2, other) == other


def test_find_cgroup_dir_v1_only_or_missing(tmp_path: Path) -> None:
    proc = write(tmp_path / "cgroup", "4:memory:/x\n1:cpu:/\n")
    assert find_cgroup_dir(proc, tmp_path) is None
    assert find_cgroup_dir(tmp_path / "absent", tmp_path) is None


# ---- this machine -------------------------------------------------------------------------


def test_reads_this_machines_real_files() -> None:
    """Whatever this machine has must give a sane reading (or a clean "none")."""
    reading = read_pressure(PressureSources())
    assert reading.source in {"cgroup", "psi", "meminfo", "none"}
    if Path("/proc/meminfo").is_file():
        assert reading.mem_available_mb is not None
        assert 0 < reading.mem_available_mb < 1 << 30  # under a petabyte
    if reading.psi_some_avg10 is not None:
        assert 0.0 <= reading.psi_some_avg10 <= 100.0
    if reading.cgroup_fraction is not None:
        assert reading.cgroup_limit_mb is not None and reading.cgroup_limit_mb > 0
        assert reading.cgroup_fraction >= 0.0
    monitor = PressureMonitor(sources=PressureSources())
    assert monitor.available == (reading.source != "none")
    assert monitor.check() in {None, "pressure"}
    assert set(monitor.status()) == {"available", "thresholds", "last_reading", "last_trigger"}
