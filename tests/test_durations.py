"""The one parser of durations and keep-alives (config/durations.py): one rule everywhere."""

from __future__ import annotations

import json
import math

import pytest

from lazyembed.config import KeepAlive, parse_duration, parse_keep_alive, parse_positive_seconds
from lazyembed.errors import ConfigError

ABSURD = "not a finite duration of at most one year"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        *[(90, 90.0), (1.5, 1.5), ("90", 90.0), ("90s", 90.0), ("30m", 1800.0)],
        *[("1h", 3600.0), ("1h30m", 5400.0), ("500ms", 0.5), ("2d", 172800.0)],
        *[(" 5M ", 300.0), ("0", 0.0), (0, 0.0), ("2e3", 2000.0), ("+5", 5.0)],
    ],
)
def test_accepts_seconds_and_units(value: object, seconds: float) -> None:
    assert parse_duration(value, key="idle_timeout") == KeepAlive.after(seconds)


@pytest.mark.parametrize("value", ["never", "forever", " NEVER ", "-1", -5, -0.5, "-5m"])
def test_never_is_said_in_words_or_with_a_negative_number(value: object) -> None:
    assert parse_duration(value, key="idle_timeout") is KeepAlive.FOREVER
    assert parse_keep_alive(value) is KeepAlive.FOREVER


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(math.inf, id="float-inf"),
        pytest.param(-math.inf, id="float-minus-inf"),
        pytest.param(json.loads("Infinity"), id="json-Infinity"),
        pytest.param(json.loads("1e309"), id="json-1e309"),
        pytest.param(json.loads("1" + "0" * 400), id="json-1-and-400-zeros"),
        pytest.param(10**400, id="int-beyond-float"),
        pytest.param(1e300, id="1e300"),
        pytest.param("1e309", id="str-1e309"),
        pytest.param("-1e309", id="str-minus-1e309"),
        pytest.param("inf", id="str-inf"),
        pytest.param("Infinity", id="str-Infinity"),
        pytest.param("1" * 400, id="digits"),
        pytest.param("1" * 400 + "s", id="digits-s"),
        pytest.param("400d", id="over-a-year"),
        pytest.param(10**9, id="a-billion-seconds"),
    ],
)
def test_non_finite_or_absurd_numbers_are_refused_with_one_message(value: object) -> None:
    for parse in (
        lambda v: parse_duration(v, key="idle_timeout", source="file x.toml"),
        lambda v: parse_keep_alive(v, key="idle_timeout", source="file x.toml"),
    ):
        with pytest.raises(ConfigError) as info:
            parse(value)
        message = str(info.value)
        assert ABSURD in message and "say 'never'" in message
        assert "idle_timeout" in message and "file x.toml" in message


@pytest.mark.parametrize(
    "value",
    [
        *["abc", "-5x", "", "   ", "5 m", "1h-30m", "nan", math.nan, True, False, []],
        pytest.param("1_0", id="digit-separator"),
        pytest.param("1__0", id="doubled-separator"),
        pytest.param("0x10", id="hex"),
        pytest.param(b"5", id="bytes"),
    ],
)
def test_malformed_values_are_refused_naming_key_value_and_source(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(value, key="idle_timeout", source="env LAZYEMBED_IDLE_TIMEOUT")
    message = str(info.value)
    assert "idle_timeout" in message and "env LAZYEMBED_IDLE_TIMEOUT" in message
    if not isinstance(value, float):  # repr(nan) is stable, but say it for the rest
        assert repr(value)[:40] in message


def test_a_huge_value_is_not_echoed_whole() -> None:
    with pytest.raises(ConfigError) as info:
        parse_keep_alive("9" * 100_000)
    assert len(str(info.value)) < 300


def test_keep_alive_none_is_the_default_lease_and_values_pass_through() -> None:
    assert parse_keep_alive(None) is KeepAlive.DEFAULT
    assert parse_keep_alive(KeepAlive.FOREVER) is KeepAlive.FOREVER
    assert parse_keep_alive("5m") == KeepAlive.after(300.0)
    assert parse_keep_alive(0) == KeepAlive.after(0.0)
    with pytest.raises(ConfigError, match="keep_alive"):
        parse_keep_alive("soon")
    with pytest.raises(ConfigError, match="idle_timeout"):
        parse_duration(None, key="idle_timeout")
    with pytest.raises(ConfigError, match="idle_timeout"):
        parse_duration(KeepAlive.DEFAULT, key="idle_timeout")


def test_keep_alive_values_are_small_hashable_and_readable() -> None:
    assert {KeepAlive.after(1.0), KeepAlive.after(1.0), KeepAlive.FOREVER} == {
        KeepAlive.after(1.0),
        KeepAlive.FOREVER,
    }
    assert KeepAlive.FOREVER.is_forever and KeepAlive.DEFAULT.is_default
    assert (str(KeepAlive.after(90)), str(KeepAlive.FOREVER)) == ("90s", "never")
    with pytest.raises(ConfigError):
        KeepAlive.after(-1.0)
    with pytest.raises(ConfigError):
        KeepAlive.after(math.inf)


def test_positive_seconds_refuse_zero_never_and_absurd() -> None:
    assert parse_positive_seconds("5s", key="graceful_timeout") == 5.0
    for value in ("0", "never", -1, math.inf, KeepAlive.FOREVER):
        with pytest.raises(ConfigError, match="graceful_timeout"):
            parse_positive_seconds(value, key="graceful_timeout")
