"""Settings: defaults ← TOML file ← LAZYEMBED_* env ← arguments, and every bad value."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from lazyembed.config import (
    Settings,
    effective_threads,
    load_settings,
    parse_duration,
    parse_keep_alive,
)
from lazyembed.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("LAZYEMBED_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    path = tmp_path / "custom.toml"
    path.write_text(text)
    monkeypatch.setenv("LAZYEMBED_CONFIG", str(path))
    return path


def test_defaults_without_any_file(tmp_path: Path) -> None:
    s = load_settings()
    assert s.idle_timeout == 1800.0 and s.variant == "fp32" and s.batch_size == 32
    assert s.port == 11435 and s.host == "127.0.0.1" and s.model is None
    assert s.cache_dir == tmp_path / "xdg-cache" / "lazyembed"
    assert s.cache_path == tmp_path / "data" / "lazyembed" / "cache.sqlite3"
    assert s.max_body_bytes == 16 * 2**20 and s.isolation == "none"


def test_default_user_config_file_is_read(tmp_path: Path) -> None:
    user_file = tmp_path / "config" / "lazyembed" / "config.toml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text('idle_timeout = "5m"\n')
    assert load_settings().idle_timeout == 300.0


def test_precedence_file_then_env_then_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, monkeypatch, 'idle_timeout = "10m"\nbatch_size = 8\nport = 9000\n')
    s = load_settings()
    assert (s.idle_timeout, s.batch_size, s.port) == (600.0, 8, 9000)
    monkeypatch.setenv("LAZYEMBED_IDLE_TIMEOUT", "90s")
    monkeypatch.setenv("LAZYEMBED_BATCH_SIZE", "16")
    s = load_settings()
    assert (s.idle_timeout, s.batch_size, s.port) == (90.0, 16, 9000)
    s = load_settings(idle_timeout="1h", batch_size=None)  # None = not given
    assert (s.idle_timeout, s.batch_size, s.port) == (3600.0, 16, 9000)


def test_env_values_are_parsed_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAZYEMBED_ALLOW_DOWNLOAD", "yes")
    monkeypatch.setenv("LAZYEMBED_VARIANT", "INT8")
    monkeypatch.setenv("LAZYEMBED_INTRA_OP_THREADS", "auto")
    monkeypatch.setenv("LAZYEMBED_CACHE_DIR", "~/somewhere")
    monkeypatch.setenv("LAZYEMBED_CACHE_MEMORY_MB", "0")
    monkeypatch.setenv("LAZYEMBED_API_KEY", "")
    monkeypatch.setenv("LAZYEMBED_SOMETHING_ELSE", "ignored")  # logged, not an error
    s = load_settings()
    assert s.allow_download is True and s.variant == "int8" and s.intra_op_threads is None
    assert s.cache_dir == Path("~/somewhere").expanduser() and s.cache_memory_mb == 0.0
    assert s.api_key is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[("true", True), ("1", True), ("on", True), ("YES", True)],
        *[("false", False), ("0", False), ("off", False), ("No", False)],
    ],
)
def test_boolean_spellings(monkeypatch: pytest.MonkeyPatch, text: str, expected: bool) -> None:
    monkeypatch.setenv("LAZYEMBED_PRESSURE_UNLOAD", text)
    assert load_settings().pressure_unload is expected


def test_file_types_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(
        tmp_path,
        monkeypatch,
        "cache_persistent = true\nidle_timeout = 45\nbatch_wait_ms = 0.5\n"
        'cache_path = "/tmp/x.sqlite3"\nisolation = "process"\n',
    )
    s = load_settings()
    assert s.cache_persistent is True and s.idle_timeout == 45.0 and s.batch_wait_ms == 0.5
    assert s.cache_path == Path("/tmp/x.sqlite3") and s.isolation == "process"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("2d", 172800.0),
        (" 5M ", 300.0),
        ("0", 0.0),
        (0, 0.0),
        ("never", None),
        ("inf", None),
        ("-1", None),
        (-5, None),
        ("-5m", None),
        (math.inf, None),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float | None) -> None:
    assert parse_duration(value, key="idle_timeout", source="argument") == seconds


@pytest.mark.parametrize(
    "value",
    [
        *["abc", "-5x", "", "   ", "5 m", "1h-30m", "nan", math.nan, True, "400d", 10**9],
        *[[], None, pytest.param(10**400, id="int-beyond-float")],
        *[pytest.param("1" * 400, id="digits"), pytest.param("1" * 400 + "s", id="digits-s")],
    ],
)
def test_parse_duration_rejects_naming_key_value_and_source(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(value, key="idle_timeout", source="env LAZYEMBED_IDLE_TIMEOUT")
    message = str(info.value)
    assert "idle_timeout" in message and repr(value) in message
    assert "env LAZYEMBED_IDLE_TIMEOUT" in message


def test_parse_keep_alive_maps_never_to_pin() -> None:
    assert parse_keep_alive(None) is None
    assert parse_keep_alive("5m") == 300.0 and parse_keep_alive(0) == 0.0
    assert parse_keep_alive(-1) == math.inf and parse_keep_alive("never") == math.inf
    with pytest.raises(ConfigError, match="keep_alive"):
        parse_keep_alive("soon")


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("LAZYEMBED_IDLE_TIMEOUT", "abc"),
        ("LAZYEMBED_IDLE_TIMEOUT", "-5x"),
        ("LAZYEMBED_IDLE_TIMEOUT", "nan"),
        ("LAZYEMBED_IDLE_TIMEOUT", "100000h"),
        ("LAZYEMBED_ALLOW_DOWNLOAD", "maybe"),
        ("LAZYEMBED_BATCH_SIZE", "0"),
        ("LAZYEMBED_BATCH_SIZE", "5000"),
        ("LAZYEMBED_BATCH_SIZE", "3.5"),
        ("LAZYEMBED_PORT", "70000"),
        ("LAZYEMBED_VARIANT", "fp16"),
        ("LAZYEMBED_ISOLATION", "thread"),
        ("LAZYEMBED_CACHE_MEMORY_MB", "-1"),
        ("LAZYEMBED_CACHE_MAX_MB", "inf"),
        ("LAZYEMBED_CACHE_MAX_MB", "0"),
        ("LAZYEMBED_PRESSURE_PSI_AVG10", "0"),
        ("LAZYEMBED_BATCH_SIZE", "1__0"),
        ("LAZYEMBED_PRESSURE_CGROUP_FRACTION", "0"),
        ("LAZYEMBED_PRESSURE_PSI_AVG10", "101"),
        ("LAZYEMBED_PRESSURE_CHECK_INTERVAL", "never"),
        ("LAZYEMBED_INTRA_OP_THREADS", "0"),
        ("LAZYEMBED_HOST", "  "),
    ],
)
def test_bad_env_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    key = env.removeprefix("LAZYEMBED_").lower()
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert key in message and repr(value) in message and f"env {env}" in message


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("idle_timeout = nan", "idle_timeout"),
        ('idle_timeout = "abc"', "idle_timeout"),
        ("idle_timeout = true", "idle_timeout"),
        ('allow_download = "perhaps"', "allow_download"),
        ("allow_download = 2", "allow_download"),
        ('batch_size = "many"', "batch_size"),
        ("batch_size = true", "batch_size"),
        ("port = 0", "port"),
        ("model = 5", "model"),
        ("cache_dir = 3", "cache_dir"),
        ("[idle_timeout]\nx = 1", "idle_timeout"),
    ],
)
def test_bad_file_values_name_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toml: str, key: str
) -> None:
    path = write_config(tmp_path, monkeypatch, toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert key in str(info.value) and f"file {path}" in str(info.value)


def test_unknown_key_in_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, monkeypatch, 'idle_timout = "5m"\n')
    with pytest.raises(ConfigError, match="unknown setting 'idle_timout'") as info:
        load_settings()
    assert f"file {path}" in str(info.value)


def test_bad_toml_is_an_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, monkeypatch, "idle_timeout = = 5\n")
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load_settings()
    assert str(path) in str(info.value)


def test_missing_explicit_config_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAZYEMBED_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="LAZYEMBED_CONFIG"):
        load_settings()


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(ConfigError, match=r"idle_timeout=nan from argument"):
        load_settings(idle_timeout=float("nan"))
    with pytest.raises(ConfigError, match=r"batch_size=True from argument"):
        load_settings(batch_size=True)
    with pytest.raises(ConfigError, match=r"cache_memory_mb=1\d+ from argument"):
        load_settings(cache_memory_mb=10**400)
    with pytest.raises(ConfigError, match="unknown setting 'idle_timeot' from argument"):
        load_settings(idle_timeot="5m")


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(AttributeError):
        s.idle_timeout = 5  # type: ignore[misc]


def test_effective_threads() -> None:
    assert effective_threads(Settings(intra_op_threads=3)) == 3
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    threads = effective_threads(Settings())
    assert threads >= 1 and (expected is None or threads == expected)
