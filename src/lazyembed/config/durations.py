"""The one parser of durations and keep-alives, and the `KeepAlive` value it returns.

Every edge (library argument, config file, environment, HTTP body, CLI flag) calls
`parse_keep_alive` or `parse_duration`; nothing below the edge sees strings, ``-1``,
``inf`` or ``None`` meaning "never". One rule everywhere:

- a number of seconds ≥ 0 (int, float, or a plain decimal string such as "90", "1.5",
  "2e3"), or a string with units: "500ms", "90s", "30m", "1h30m", "2d";
- "never" (or "forever"), or any negative number or duration ("-1", "-5m") → `FOREVER`;
- refused with one message: NaN, infinities (``1e309``, JSON ``Infinity``, "inf"),
  numbers beyond a float, anything longer than one year (surely a unit mistake),
  booleans, empty strings, digit separators ("1_0"), unknown units.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from lazyembed.errors import ConfigError

MAX_DURATION_S = 365 * 24 * 3600.0  # one year: anything longer is a unit mistake
NEVER_WORDS = frozenset({"never", "forever"})

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN_NUMBER_RE = re.compile(rf"[+-]?{_NUMBER}(?:e[+-]?\d+)?")
_DURATION_RE = re.compile(rf"([+-]?)((?:{_NUMBER}(?:ms|s|m|h|d))+)")
_PART_RE = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")

Kind = Literal["default", "seconds", "forever"]


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """How long a model stays loaded after a call (or while idle).

    `DEFAULT`: the idle timeout applies (only meaningful per call); ``KeepAlive.after(s)``:
    ``s`` seconds ≥ 0 (0 = unload as soon as nothing else holds the model); `FOREVER`: a
    pin, until an explicit unload. `idle_timeout` uses the same type without DEFAULT.
    """

    kind: Kind
    seconds: float = 0.0  # meaningful for kind "seconds" only

    DEFAULT: ClassVar[KeepAlive]
    FOREVER: ClassVar[KeepAlive]

    @staticmethod
    def after(seconds: float) -> KeepAlive:
        if not (0.0 <= seconds <= MAX_DURATION_S):
            raise ConfigError(f"invalid duration {seconds!r}: expected 0 to one year")
        return KeepAlive("seconds", float(seconds))

    @property
    def is_default(self) -> bool:
        return self.kind == "default"

    @property
    def is_forever(self) -> bool:
        return self.kind == "forever"

    def __str__(self) -> str:
        if self.kind == "seconds":
            return f"{self.seconds:g}s"
        return "never" if self.kind == "forever" else "default"


KeepAlive.DEFAULT = KeepAlive("default")
KeepAlive.FOREVER = KeepAlive("forever")

#: What a caller may pass where a keep-alive or duration is expected.
KeepAliveLike = KeepAlive | float | int | str | None


def config_error(key: str, value: object, source: str, why: str) -> ConfigError:
    """The one shape of a bad-setting message: key, value (shortened), source, why."""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ConfigError(f"invalid {key}={shown} from {source}: {why}")


_ABSURD = "not a finite duration of at most one year; say 'never' for no timeout"


def _seconds_of(value: object, key: str, source: str) -> float:
    """Signed seconds (negative = never) by the module's rule; raises ConfigError."""
    if isinstance(value, bool):
        raise config_error(key, value, source, "expected a duration, not a boolean")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float
            raise config_error(key, value, source, _ABSURD) from None
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in NEVER_WORDS:
            return -1.0
        if text.lstrip("+-") in ("inf", "infinity"):  # a number's spelling, not a word
            raise config_error(key, value, source, _ABSURD)
        if _PLAIN_NUMBER_RE.fullmatch(text):
            seconds = float(text)
        else:
            match = _DURATION_RE.fullmatch(text)
            if match is None:
                raise config_error(
                    key, value, source, 'expected seconds or a duration like "90s", "30m", "1h"'
                )
            total = sum(
                float(n) * _UNIT_SECONDS[unit] for n, unit in _PART_RE.findall(match.group(2))
            )
            seconds = -total if match.group(1) == "-" else total
    else:
        raise config_error(key, value, source, f"expected a duration, not {type(value).__name__}")
    if not math.isfinite(seconds) or abs(seconds) > MAX_DURATION_S:
        raise config_error(key, value, source, _ABSURD)
    return seconds


def parse_duration(value: object, *, key: str, source: str = "argument") -> KeepAlive:
    """A duration setting such as `idle_timeout`: seconds ≥ 0 or FOREVER (never DEFAULT)."""
    if isinstance(value, KeepAlive):
        if value.is_default:
            raise config_error(key, value, source, "expected a duration or 'never'")
        return value
    seconds = _seconds_of(value, key, source)
    return KeepAlive.FOREVER if seconds < 0 else KeepAlive("seconds", seconds)


def parse_keep_alive(
    value: object, *, key: str = "keep_alive", source: str = "argument"
) -> KeepAlive:
    """A per-call keep-alive: None → DEFAULT; otherwise as `parse_duration`."""
    if value is None:
        return KeepAlive.DEFAULT
    if isinstance(value, KeepAlive):
        return value
    return parse_duration(value, key=key, source=source)


def parse_positive_seconds(value: object, *, key: str, source: str = "argument") -> float:
    """A duration that must be a finite number of seconds > 0 (intervals, grace periods)."""
    if isinstance(value, KeepAlive):
        raise config_error(key, value, source, "must be a positive duration")
    seconds = _seconds_of(value, key, source)
    if seconds <= 0:
        raise config_error(key, value, source, "must be a positive duration")
    return seconds
