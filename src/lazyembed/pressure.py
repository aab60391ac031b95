"""Is the machine (or our cgroup) short of memory right now? Cheap readers for the watcher.

Why: an idle timeout frees memory eventually; a machine running short needs it now. The
lifecycle's watcher calls `PressureMonitor.check` at ``pressure_check_interval`` while a
model is loaded (never while unloaded), and unloads an idle model with reason
``"pressure"`` when it says so.

Signals, in order of preference (every one that exists is read; each is a few small
file reads, ~tens of µs in all):

1. cgroup v2 of this process: ``memory.current`` minus reclaimable ``inactive_file``
   (from ``memory.stat``) over the tightest of ``memory.max`` / ``memory.high``
   ("max" = unlimited: no fraction), and the cgroup's own PSI in ``memory.pressure``.
   Page cache that the kernel would drop first is not counted, otherwise a cgroup that
   reads files sits near its limit all the time without being short of anything.
2. System PSI, ``/proc/pressure/memory`` ``some avg10`` (used only when the cgroup has
   no ``memory.pressure`` of its own).
3. ``MemAvailable`` in ``/proc/meminfo``.

The rule (`PressureMonitor.check`): ``"pressure"`` when ANY available signal crosses its
threshold — ``cgroup_fraction >= cgroup_fraction threshold`` or ``psi some avg10 >=
psi_avg10`` or ``MemAvailable < min_available_mb``; a threshold of None disables that
signal. A file that is missing or malformed contributes nothing (never an exception).
Where none of the files gives a value (macOS, Windows, no /proc), the monitor logs one
line saying the feature is off and stays off.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lazyembed import memory
from lazyembed.config.settings import PressureSettings

__all__ = [
    "PressureMonitor",
    "PressureReading",
    "PressureSources",
    "find_cgroup_dir",
    "read_pressure",
]

log = logging.getLogger("lazyembed")

#: "Pressure unloading is off" is said once per process, however many monitors exist.
_OFF_LOGGED = False
_OFF_LOGGED_LOCK = threading.Lock()
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def find_cgroup_dir(
    proc_self_cgroup: Path = PROC_SELF_CGROUP, root: Path = CGROUP_ROOT
) -> Path | None:
    """This process's cgroup v2 directory, or None (cgroup v1 only, not Linux, ...).

    The ``0::<path>`` line of /proc/self/cgroup is looked up under the unified mount
    (``root``, or ``root/unified`` on hybrid v1+v2 hosts). Without a cgroup namespace a
    container may see a host path that does not exist inside it; its own cgroup is then
    mounted at the root, so the root is taken when it has memory files.
    """
    text = _read_text(proc_self_cgroup)
    if text is None:
        return None
    relative: str | None = None
    for line in text.splitlines():
        if line.startswith("0::"):
            relative = line[3:].strip().lstrip("/")
            break
    if relative is None:
        return None
    for base in (root, root / "unified"):
        if not (base / "cgroup.controllers").is_file():
            continue
        leaf = base / relative if relative else base
        if (leaf / "cgroup.controllers").is_file():
            return leaf
        if (base / "memory.current").is_file():
            return base
    return None


@dataclass(frozen=True)
class PressureSources:
    """Where to read; every path is injectable so tests feed recorded contents.

    None for a path means "do not read this signal".
    """

    cgroup_dir: Path | None = field(default_factory=find_cgroup_dir)
    system_psi: Path | None = Path("/proc/pressure/memory")
    meminfo: Path | None = Path("/proc/meminfo")


@dataclass(frozen=True)
class PressureReading:
    """One look at every signal; None where a signal is unavailable."""

    #: The most preferred source that gave any value: "cgroup", "psi", "meminfo", "none".
    source: str
    #: Working set (memory.current - inactive_file) over the cgroup's limit, 0..1+.
    cgroup_fraction: float | None = None
    cgroup_used_mb: float | None = None
    cgroup_limit_mb: float | None = None
    #: Percent of the last 10 s in which some task stalled on memory.
    psi_some_avg10: float | None = None
    #: Where the PSI came from: "cgroup" or "system".
    psi_source: str | None = None
    mem_available_mb: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_text(path: Path) -> str | None:
    """The file's text, or None when it cannot be read (missing, permission, not a file)."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except (OSError, ValueError):
        return None


def _read_bytes(path: Path) -> int | None:
    """A cgroup v2 byte count or limit; None for "max" (unlimited), missing or malformed."""
    text = _read_text(path)
    if text is None:
        return None
    value = text.strip()
    if value == "max" or not value.isdigit():
        return None
    return int(value)


def _stat_value(path: Path, key: str) -> int | None:
    """One ``key value`` line of a cgroup memory.stat."""
    text = _read_text(path)
    if text is None:
        return None
    prefix = key + " "
    for line in text.splitlines():
        if line.startswith(prefix):
            value = line[len(prefix) :].strip()
            return int(value) if value.isdigit() else None
    return None


def parse_psi_some_avg10(text: str) -> float | None:
    """``some avg10`` from PSI text (``some avg10=1.23 avg60=... total=...``), or None."""
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] != "some":
            continue
        for part in parts[1:]:
            key, sep, value = part.partition("=")
            if sep and key == "avg10":
                try:
                    number = float(value)
                except ValueError:
                    return None
                return number if number >= 0.0 else None
        return None
    return None


def parse_mem_available_mb(text: str) -> float | None:
    """``MemAvailable`` from /proc/meminfo text, in MiB, or None."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                unit = parts[2] if len(parts) > 2 else "kB"
                if unit != "kB":
                    return None
                return int(parts[1]) / 1024.0
            return None
    return None


def _cgroup_usage(directory: Path) -> tuple[float, float, float] | None:
    """(used / limit, used MB, limit MB) of one cgroup with a limit, else None.

    Used = memory.current minus inactive file cache (reclaimable without pressure).
    """
    limits = [
        x
        for x in (_read_bytes(directory / "memory.max"), _read_bytes(directory / "memory.high"))
        if x is not None and x > 0
    ]
    if not limits:
        return None
    current = _read_bytes(directory / "memory.current")
    if current is None:
        return None
    inactive = _stat_value(directory / "memory.stat", "inactive_file") or 0
    used = max(0, current - min(inactive, current))
    limit = min(limits)
    return used / limit, used / memory.MB, limit / memory.MB


def _cgroup_usages(directory: Path, max_depth: int = 32) -> list[tuple[float, float, float]]:
    """`_cgroup_usage` of ``directory`` and of each ancestor that is a cgroup too."""
    usages = []
    for level, current in enumerate((directory, *directory.parents)):
        if level >= max_depth or not (current / "memory.current").is_file():
            break
        usage = _cgroup_usage(current)
        if usage is not None:
            usages.append(usage)
    return usages


def _read_psi(path: Path) -> float | None:
    text = _read_text(path)
    return None if text is None else parse_psi_some_avg10(text)


def read_pressure(sources: PressureSources | None = None) -> PressureReading:
    """Read every available signal; never raises for missing or malformed files."""
    if sources is None:
        sources = PressureSources()
    fraction = used_mb = limit_mb = psi = available_mb = None
    psi_source: str | None = None
    cgroup_gave = False
    directory = sources.cgroup_dir
    if directory is not None:
        # The limit that binds may sit on an ancestor (a systemd slice, a container's
        # parent): the fullest cgroup from ours up to the root decides.
        for usage in _cgroup_usages(directory):
            if fraction is None or usage[0] > fraction:
                fraction, used_mb, limit_mb = usage
                cgroup_gave = True
        psi = _read_psi(directory / "memory.pressure")
        if psi is not None:
            psi_source = "cgroup"
            cgroup_gave = True
    if psi is None and sources.system_psi is not None:
        psi = _read_psi(sources.system_psi)
        if psi is not None:
            psi_source = "system"
    if sources.meminfo is not None:
        text = _read_text(sources.meminfo)
        available_mb = None if text is None else parse_mem_available_mb(text)
    if cgroup_gave:
        source = "cgroup"
    elif psi is not None:
        source = "psi"
    elif available_mb is not None:
        source = "meminfo"
    else:
        source = "none"
    return PressureReading(
        source=source,
        cgroup_fraction=fraction,
        cgroup_used_mb=used_mb,
        cgroup_limit_mb=limit_mb,
        psi_some_avg10=psi,
        psi_source=psi_source,
        mem_available_mb=available_mb,
    )


def _log_off_once() -> None:
    global _OFF_LOGGED
    with _OFF_LOGGED_LOCK:
        if _OFF_LOGGED:
            return
        _OFF_LOGGED = True
    log.info(
        "memory pressure unloading is off: no cgroup v2, PSI or /proc/meminfo readings "
        "on this system"
    )


_DEFAULTS = PressureSettings()  # the defaults live in the settings, once


class PressureMonitor:
    """The watcher's ``periodic_check``: returns "pressure" or None (see the module doc).

    Availability is decided by the first reading (at construction): if no signal gives a
    value, one log line says pressure unloading is off and `check` returns None forever
    without touching the file system. Locks: `_lock` guards `last_reading` and
    `last_trigger`, so `check` may be called from the watcher while a status report
    reads them from another thread.
    """

    def __init__(
        self,
        *,
        psi_avg10: float | None = _DEFAULTS.psi_avg10,
        min_available_mb: float | None = _DEFAULTS.min_available_mb,
        cgroup_fraction: float | None = _DEFAULTS.cgroup_fraction,
        sources: PressureSources | None = None,
    ) -> None:
        self.psi_avg10 = psi_avg10
        self.min_available_mb = min_available_mb
        self.cgroup_fraction = cgroup_fraction
        self.sources = sources if sources is not None else PressureSources()
        self._lock = threading.Lock()
        first = read_pressure(self.sources)
        self._available = first.source != "none"
        self._last_reading: PressureReading | None = first
        self._last_trigger: str | None = None
        if not self._available:
            _log_off_once()

    @classmethod
    def from_settings(
        cls, settings: PressureSettings, sources: PressureSources | None = None
    ) -> PressureMonitor:
        """Build from the pressure group of the settings."""
        return cls(
            psi_avg10=settings.psi_avg10,
            min_available_mb=settings.min_available_mb,
            cgroup_fraction=settings.cgroup_fraction,
            sources=sources,
        )

    @property
    def available(self) -> bool:
        return self._available

    @property
    def last_reading(self) -> PressureReading | None:
        with self._lock:
            return self._last_reading

    @property
    def last_trigger(self) -> str | None:
        """Which signal crossed which threshold at the last check that said "pressure"."""
        with self._lock:
            return self._last_trigger

    def triggers(self, reading: PressureReading) -> list[str]:
        """Every threshold the reading crosses, as readable text (empty: no pressure)."""
        crossed: list[str] = []
        if (
            self.cgroup_fraction is not None
            and reading.cgroup_fraction is not None
            and reading.cgroup_fraction >= self.cgroup_fraction
        ):
            crossed.append(f"cgroup memory {reading.cgroup_fraction:.3f} >= {self.cgroup_fraction}")
        if (
            self.psi_avg10 is not None
            and reading.psi_some_avg10 is not None
            and reading.psi_some_avg10 >= self.psi_avg10
        ):
            crossed.append(
                f"{reading.psi_source} PSI some avg10 {reading.psi_some_avg10} >= {self.psi_avg10}"
            )
        if (
            self.min_available_mb is not None
            and reading.mem_available_mb is not None
            and reading.mem_available_mb < self.min_available_mb
        ):
            crossed.append(
                f"MemAvailable {reading.mem_available_mb:.0f} MB < {self.min_available_mb} MB"
            )
        return crossed

    def check(self) -> str | None:
        """Return "pressure" when any available signal crosses its threshold, else None."""
        if not self._available:
            return None
        reading = read_pressure(self.sources)
        crossed = self.triggers(reading)
        with self._lock:
            self._last_reading = reading
            if crossed:
                self._last_trigger = "; ".join(crossed)
        if crossed:
            log.info("memory pressure: %s", "; ".join(crossed))
            return "pressure"
        return None

    __call__ = check

    def status(self) -> dict[str, Any]:
        """For get_memory_usage(): availability, thresholds, the last reading."""
        reading = self.last_reading
        return {
            "available": self._available,
            "thresholds": {
                "psi_avg10": self.psi_avg10,
                "min_available_mb": self.min_available_mb,
                "cgroup_fraction": self.cgroup_fraction,
            },
            "last_reading": None if reading is None else reading.as_dict(),
            "last_trigger": self.last_trigger,
        }
