"""All settings of lazyembed in one frozen `Settings`, and the duration parser.

Precedence, lowest to highest: defaults ← TOML file ← ``LAZYEMBED_<KEY>`` environment ←
keyword arguments of `load_settings` (``None`` there means "not given").

The file is ``$LAZYEMBED_CONFIG`` if set (then it must exist), else
``platformdirs.user_config_dir("lazyembed")/config.toml`` (a missing default file is fine).
It holds top-level keys named like the fields below, e.g.::

    idle_timeout = "10m"
    variant = "int8"
    pressure_unload = true

Every invalid value raises `ConfigError` naming the key, the value and its source
("argument", "env LAZYEMBED_IDLE_TIMEOUT", "file /path/config.toml"). Unknown keys in the
file or the arguments are errors too (a typo should not be silently ignored); unknown
``LAZYEMBED_*`` environment variables are only logged, because the environment is shared
with other tools. An environment variable set to the empty string counts as not set.

Durations (`parse_duration`): a number of seconds, or a string such as "90s", "30m",
"1h30m", "500ms", "2d"; "0" is zero. "Never" is spelled "never", "inf", "infinity",
"forever", any negative number or duration ("-1", "-5m"), or the float ``math.inf`` —
the setting then holds ``None``. Rejected: NaN, booleans, empty strings, unknown units
("-5x"), and anything longer than one year (surely a unit mistake). Per-call keep-alive
uses `parse_keep_alive`, which maps "never"/negative to ``math.inf`` (= pin) so that
``None`` can keep meaning "not given, use the idle timeout".
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import platformdirs

from lazyembed.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]

log = logging.getLogger("lazyembed")

APP_NAME = "lazyembed"
ENV_PREFIX = "LAZYEMBED_"
CONFIG_ENV = "LAZYEMBED_CONFIG"
MAX_DURATION_S = 365 * 24 * 3600.0  # one year: anything longer is a unit mistake

Variant = Literal["fp32", "int8"]
Isolation = Literal["none", "process"]


def _default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / APP_NAME


def default_cache_path() -> Path:
    """Where the persistent embedding cache lives unless `cache_path` says otherwise."""
    return Path(platformdirs.user_data_dir(APP_NAME)) / "cache.sqlite3"


def default_config_file() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


@dataclass(frozen=True)
class Settings:
    """Every setting of the project; build it with `load_settings`, not directly."""

    model: str | None = None
    cache_dir: Path = field(default_factory=_default_cache_dir)
    allow_download: bool = False
    variant: Variant = "fp32"
    batch_size: int = 32
    intra_op_threads: int | None = None  # None → CPUs this process may run on
    idle_timeout: float | None = 1800.0  # seconds; None = never unload when idle
    max_events: int = 64
    cache_memory_mb: float = 32.0  # 0 disables the in-memory LRU
    cache_persistent: bool = False
    cache_path: Path | None = None  # None → default_cache_path()
    cache_max_mb: float = 512.0
    pressure_unload: bool = False
    pressure_check_interval: float = 5.0
    pressure_psi_avg10: float = 10.0
    pressure_min_available_mb: float = 256.0
    pressure_cgroup_fraction: float = 0.95
    isolation: Isolation = "none"
    host: str = "127.0.0.1"
    port: int = 11435
    api_key: str | None = None
    max_inputs_per_request: int = 2048
    max_chars_per_input: int = 100_000
    max_body_bytes: int = 16 * 2**20
    batch_wait_ms: float = 2.0
    batch_max_size: int = 64
    batch_max_tokens: int = 16384


# ---- durations ------------------------------------------------------------------------

_NEVER_WORDS = frozenset({"never", "inf", "+inf", "infinity", "forever"})
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_RE = re.compile(rf"([+-]?)((?:{_NUMBER}(?:ms|s|m|h|d))+)")
_PART_RE = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")


def _fail(key: str, value: object, source: str, why: str) -> ConfigError:
    return ConfigError(f"invalid {key}={value!r} from {source}: {why}")


def _duration_seconds(value: object, key: str, source: str) -> float:
    """Seconds, with ``math.inf`` for never (negative or a never-word)."""
    if isinstance(value, bool):
        raise _fail(key, value, source, "expected a duration, not a boolean")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float
            raise _fail(key, value, source, "absurdly large; use 'never' for no timeout") from None
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in _NEVER_WORDS:
            return math.inf
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION_RE.fullmatch(text)
            if match is None:
                raise _fail(
                    key, value, source, 'expected seconds or a duration like "90s", "30m", "1h"'
                ) from None
            total = sum(
                float(n) * _UNIT_SECONDS[unit] for n, unit in _PART_RE.findall(match.group(2))
            )
            seconds = -total if match.group(1) == "-" else total
        if seconds == math.inf:  # digits beyond any float: a typo, not "never"
            raise _fail(key, value, source, "absurdly large; use 'never' for no timeout")
    else:
        raise _fail(key, value, source, f"expected a duration, not {type(value).__name__}")
    if math.isnan(seconds):
        raise _fail(key, value, source, "NaN is not a duration")
    if seconds < 0 or seconds == math.inf:
        return math.inf
    if seconds > MAX_DURATION_S:
        raise _fail(key, value, source, "longer than one year; use 'never' for no timeout")
    return seconds


def parse_duration(value: object, *, key: str, source: str) -> float | None:
    """Seconds ≥ 0, or None for never (negative, "never", "inf"). See the module docstring."""
    seconds = _duration_seconds(value, key, source)
    return None if seconds == math.inf else seconds


def parse_keep_alive(
    value: object, *, key: str = "keep_alive", source: str = "argument"
) -> float | None:
    """A per-call keep-alive for `Lifecycle.acquire`: None = not given (the idle timeout
    applies), 0 = unload after the call, seconds > 0, or ``math.inf`` = pin (negative or
    "never")."""
    if value is None:
        return None
    return _duration_seconds(value, key, source)


# ---- field parsers --------------------------------------------------------------------

Parser = Callable[[object, str, str], Any]


def _parse_bool(value: object, key: str, source: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in {"true", "1", "yes", "on"}:
            return True
        if text in {"false", "0", "no", "off"}:
            return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _fail(key, value, source, "expected true/false/1/0/yes/no/on/off")


def _int(lo: int, hi: int | None = None, *, optional: str | None = None) -> Parser:
    def parse(value: object, key: str, source: str) -> int | None:
        if optional is not None and isinstance(value, str) and value.strip().lower() == optional:
            return None
        if isinstance(value, bool):
            raise _fail(key, value, source, "expected an integer, not a boolean")
        number: int
        if isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str):
            try:
                number = int(value.strip())  # Python's own digit grouping: 1_000, not 1__0
            except ValueError:
                raise _fail(key, value, source, "expected an integer") from None
        else:
            raise _fail(key, value, source, "expected an integer")
        if number < lo or (hi is not None and number > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise _fail(key, value, source, f"must be {bounds}")
        return number

    return parse


def _float(lo: float, hi: float | None = None, *, lo_open: bool = False) -> Parser:
    def parse(value: object, key: str, source: str) -> float:
        if isinstance(value, bool):
            raise _fail(key, value, source, "expected a number, not a boolean")
        if isinstance(value, (int, float)):
            try:
                number = float(value)
            except OverflowError:  # an int beyond any float
                raise _fail(key, value, source, "must be a finite number") from None
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise _fail(key, value, source, "expected a number") from None
        else:
            raise _fail(key, value, source, "expected a number")
        if not math.isfinite(number):
            raise _fail(key, value, source, "must be a finite number")
        if number < lo or (lo_open and number == lo) or (hi is not None and number > hi):
            low = f"> {lo}" if lo_open else f">= {lo}"
            raise _fail(
                key, value, source, f"must be {low}" + (f" and <= {hi}" if hi is not None else "")
            )
        return number

    return parse


def _choice(*choices: str) -> Parser:
    def parse(value: object, key: str, source: str) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise _fail(key, value, source, f"expected one of {', '.join(choices)}")

    return parse


def _string(*, empty_ok: bool) -> Parser:
    def parse(value: object, key: str, source: str) -> str:
        if not isinstance(value, str):
            raise _fail(key, value, source, "expected a string")
        if not empty_ok and not value.strip():
            raise _fail(key, value, source, "must not be empty")
        return value

    return parse


def _path(value: object, key: str, source: str) -> Path:
    if isinstance(value, Path):
        return value.expanduser()
    if isinstance(value, str) and value.strip():
        return Path(value).expanduser()
    raise _fail(key, value, source, "expected a path")


def _idle_timeout(value: object, key: str, source: str) -> float | None:
    return parse_duration(value, key=key, source=source)


def _positive_duration(value: object, key: str, source: str) -> float:
    seconds = parse_duration(value, key=key, source=source)
    if seconds is None or seconds <= 0:
        raise _fail(key, value, source, "must be a positive duration")
    return seconds


_PARSERS: dict[str, Parser] = {
    "model": _string(empty_ok=False),
    "cache_dir": _path,
    "allow_download": _parse_bool,
    "variant": _choice("fp32", "int8"),
    "batch_size": _int(1, 4096),
    "intra_op_threads": _int(1, 1024, optional="auto"),
    "idle_timeout": _idle_timeout,
    "max_events": _int(1, 100_000),
    "cache_memory_mb": _float(0.0),
    "cache_persistent": _parse_bool,
    "cache_path": _path,
    "cache_max_mb": _float(0.0, lo_open=True),  # the store is always bounded
    "pressure_unload": _parse_bool,
    "pressure_check_interval": _positive_duration,
    "pressure_psi_avg10": _float(0.0, 100.0, lo_open=True),  # 0 would mean always
    "pressure_min_available_mb": _float(0.0),
    "pressure_cgroup_fraction": _float(0.0, 1.0, lo_open=True),
    "isolation": _choice("none", "process"),
    "host": _string(empty_ok=False),
    "port": _int(1, 65535),
    "api_key": _string(empty_ok=False),
    "max_inputs_per_request": _int(1),
    "max_chars_per_input": _int(1),
    "max_body_bytes": _int(1),
    "batch_wait_ms": _float(0.0, 60_000.0),
    "batch_max_size": _int(1),
    "batch_max_tokens": _int(1),
}
_FIELDS = {f.name for f in dataclasses.fields(Settings)}
assert set(_PARSERS) == _FIELDS, "every Settings field needs a parser"


def _apply(values: dict[str, Any], raw: Mapping[str, object], source: str) -> None:
    for key, value in raw.items():
        parser = _PARSERS.get(key)
        if parser is None:
            raise ConfigError(
                f"unknown setting {key!r} from {source}; known: {', '.join(sorted(_PARSERS))}"
            )
        values[key] = parser(value, key, source)


def _read_file(path: Path) -> dict[str, object]:
    source = f"file {path}"
    try:
        with path.open("rb") as handle:
            data: dict[str, object] = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {source}: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc}") from exc
    return data


def config_file() -> tuple[Path, bool]:
    """The config file to read and whether it must exist (explicit via LAZYEMBED_CONFIG)."""
    explicit = os.environ.get(CONFIG_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser(), True
    return default_config_file(), False


def load_settings(**overrides: Any) -> Settings:
    """Defaults ← TOML file ← LAZYEMBED_* env ← keyword arguments (None = not given)."""
    values: dict[str, Any] = {}
    path, required = config_file()
    if required or path.is_file():
        if required and not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}={str(path)!r}: no such config file")
        _apply(values, _read_file(path), f"file {path}")
    for name, raw in sorted(os.environ.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or raw == "":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in _PARSERS:
            _apply(values, {key: raw}, f"env {name}")
        else:
            log.warning("ignoring unknown environment variable %s", name)
    _apply(values, {k: v for k, v in overrides.items() if v is not None}, "argument")
    if values.get("cache_path") is None:
        values["cache_path"] = default_cache_path()
    return Settings(**values)


def effective_threads(settings: Settings) -> int:
    """intra_op_threads, or the CPUs this process may run on (affinity, else cpu_count)."""
    if settings.intra_op_threads is not None:
        return settings.intra_op_threads
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def effective_cache_path(settings: Settings) -> Path:
    """The SQLite cache file (settings built without `load_settings` may hold None)."""
    return settings.cache_path or default_cache_path()
