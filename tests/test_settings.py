"""Settings: defaults ← TOML file ← LAZYEMBED_* env ← arguments, grouped, every bad value."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from lazyembed.config import (
    KEYS,
    KeepAlive,
    ServerSettings,
    Settings,
    effective_threads,
    load_settings,
    prepack_resolved,
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


def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str | bytes) -> Path:
    path = tmp_path / "custom.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    monkeypatch.setenv("LAZYEMBED_CONFIG", str(path))
    return path


def test_defaults_without_any_file(tmp_path: Path) -> None:
    s = load_settings()
    assert s.idle_timeout == KeepAlive.after(1800.0) and s.variant == "fp32"
    assert s.encode_batch_size == 32 and s.model is None and s.isolation == "none"
    assert s.server == ServerSettings(host="127.0.0.1", port=11435)
    assert s.server.client_url == "http://127.0.0.1:11435"
    assert s.server.graceful_timeout == 30.0 and s.server.max_body_bytes == 16 * 2**20
    assert s.model_cache_dir == tmp_path / "xdg-cache" / "lazyembed"
    assert s.cache.path == tmp_path / "data" / "lazyembed" / "cache.sqlite3"
    assert s.cache.memory_mb == 32.0 and s.pressure.unload is False


def test_every_field_has_exactly_one_key() -> None:
    paths = [key.path for key in KEYS.values()]
    assert len(paths) == len(set(paths))
    assert "server.graceful_timeout" in paths and "server.url" in paths


def test_default_user_config_file_is_read(tmp_path: Path) -> None:
    user_file = tmp_path / "config" / "lazyembed" / "config.toml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text('idle_timeout = "5m"\n')
    assert load_settings().idle_timeout == KeepAlive.after(300.0)


def test_precedence_file_then_env_then_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(
        tmp_path, monkeypatch, 'idle_timeout = "10m"\nencode_batch_size = 8\nport = 9000\n'
    )
    s = load_settings()
    assert (s.idle_timeout.seconds, s.encode_batch_size, s.server.port) == (600.0, 8, 9000)
    monkeypatch.setenv("LAZYEMBED_IDLE_TIMEOUT", "90s")
    monkeypatch.setenv("LAZYEMBED_ENCODE_BATCH_SIZE", "16")
    s = load_settings()
    assert (s.idle_timeout.seconds, s.encode_batch_size, s.server.port) == (90.0, 16, 9000)
    s = load_settings(idle_timeout="1h", encode_batch_size=None)  # None = not given
    assert (s.idle_timeout.seconds, s.encode_batch_size, s.server.port) == (3600.0, 16, 9000)


def test_file_tables_name_the_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(
        tmp_path,
        monkeypatch,
        "[cache]\nmemory_mb = 64\npersistent = true\n"
        '[server]\nport = 9001\ngraceful_timeout = "5s"\n'
        "[pressure]\nunload = true\n",
    )
    s = load_settings()
    assert s.cache.memory_mb == 64.0 and s.cache.persistent is True
    assert s.server.port == 9001 and s.server.graceful_timeout == 5.0
    assert s.pressure.unload is True


def test_unknown_key_in_a_table_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, monkeypatch, "[cache]\nmemroy_mb = 64\n")
    with pytest.raises(ConfigError, match=r"'memroy_mb' in table \[cache\]"):
        load_settings()


def test_env_values_are_parsed_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAZYEMBED_ALLOW_DOWNLOAD", "yes")
    monkeypatch.setenv("LAZYEMBED_VARIANT", "INT8")
    monkeypatch.setenv("LAZYEMBED_INTRA_OP_THREADS", "auto")
    monkeypatch.setenv("LAZYEMBED_MODEL_CACHE_DIR", "~/somewhere")
    monkeypatch.setenv("LAZYEMBED_CACHE_MEMORY_MB", "0")
    monkeypatch.setenv("LAZYEMBED_API_KEY", "")
    monkeypatch.setenv("LAZYEMBED_SOMETHING_ELSE", "ignored")  # logged, not an error
    s = load_settings()
    assert s.allow_download is True and s.variant == "int8" and s.intra_op_threads is None
    assert s.model_cache_dir == Path("~/somewhere").expanduser() and s.cache.memory_mb == 0.0
    assert s.server.api_key is None


def test_the_clients_url_and_the_grace_period_are_settings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LAZYEMBED_URL", "http://127.0.0.1:9999/")
    monkeypatch.setenv("LAZYEMBED_GRACEFUL_TIMEOUT", "2m")
    with caplog.at_level(logging.WARNING, logger="lazyembed"):
        s = load_settings()
    assert s.server.client_url == "http://127.0.0.1:9999" and s.server.graceful_timeout == 120.0
    assert not caplog.records  # LAZYEMBED_URL is known: no "unknown variable" warning


@pytest.mark.parametrize(
    ("old", "new", "value", "read"),
    [
        ("cache_dir", "model_cache_dir", "/tmp/m", lambda s: s.model_cache_dir == Path("/tmp/m")),
        ("batch_size", "encode_batch_size", 8, lambda s: s.encode_batch_size == 8),
        ("batch_max_size", "server_batch_max_inputs", 9, lambda s: s.server.batch_max_inputs == 9),
        (
            "batch_max_tokens",
            "server_batch_max_tokens",
            99,
            lambda s: s.server.batch_max_tokens == 99,
        ),
        ("batch_wait_ms", "server_batch_wait_ms", 1.0, lambda s: s.server.batch_wait_ms == 1.0),
    ],
)
def test_renamed_keys_still_work_with_a_deprecation(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    old: str,
    new: str,
    value: object,
    read: object,
) -> None:
    with pytest.warns(DeprecationWarning, match=f"'{old}'.*use '{new}'"):
        s = load_settings(**{old: value})
    assert read(s)  # type: ignore[operator]
    monkeypatch.setenv(f"LAZYEMBED_{old.upper()}", str(value))
    with caplog.at_level(logging.WARNING, logger="lazyembed"):
        s = load_settings()
    assert read(s)  # type: ignore[operator]
    assert any(new in r.getMessage() and "deprecated" in r.getMessage() for r in caplog.records)


def test_old_flat_attribute_names_still_read_with_a_deprecation() -> None:
    s = load_settings(cache_memory_mb=7)
    with pytest.warns(DeprecationWarning, match="Settings.cache.memory_mb"):
        assert s.cache_memory_mb == 7.0  # type: ignore[attr-defined]
    with pytest.warns(DeprecationWarning, match="Settings.server.port"):
        assert s.port == 11435  # type: ignore[attr-defined]
    with pytest.warns(DeprecationWarning, match="Settings.model_cache_dir"):
        assert s.cache_dir == s.model_cache_dir  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        s.no_such_setting  # type: ignore[attr-defined]  # noqa: B018


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[("true", True), ("1", True), ("on", True), ("YES", True)],
        *[("false", False), ("0", False), ("off", False), ("No", False)],
    ],
)
def test_boolean_spellings(monkeypatch: pytest.MonkeyPatch, text: str, expected: bool) -> None:
    monkeypatch.setenv("LAZYEMBED_PRESSURE_UNLOAD", text)
    assert load_settings().pressure.unload is expected


def test_file_types_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(
        tmp_path,
        monkeypatch,
        "cache_persistent = true\nidle_timeout = 45\nserver_batch_wait_ms = 0.5\n"
        'cache_path = "/tmp/x.sqlite3"\nisolation = "process"\n',
    )
    s = load_settings()
    assert s.cache.persistent is True and s.idle_timeout.seconds == 45.0
    assert s.server.batch_wait_ms == 0.5
    assert s.cache.path == Path("/tmp/x.sqlite3") and s.isolation == "process"


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("LAZYEMBED_IDLE_TIMEOUT", "abc"),
        ("LAZYEMBED_IDLE_TIMEOUT", "-5x"),
        ("LAZYEMBED_IDLE_TIMEOUT", "nan"),
        ("LAZYEMBED_IDLE_TIMEOUT", "100000h"),
        ("LAZYEMBED_IDLE_TIMEOUT", "1_0"),
        ("LAZYEMBED_IDLE_TIMEOUT", "inf"),
        ("LAZYEMBED_IDLE_TIMEOUT", "1e309"),
        ("LAZYEMBED_ALLOW_DOWNLOAD", "maybe"),
        ("LAZYEMBED_ENCODE_BATCH_SIZE", "0"),
        ("LAZYEMBED_ENCODE_BATCH_SIZE", "5000"),
        ("LAZYEMBED_ENCODE_BATCH_SIZE", "3.5"),
        ("LAZYEMBED_ENCODE_BATCH_SIZE", "1__0"),
        ("LAZYEMBED_PORT", "70000"),
        ("LAZYEMBED_VARIANT", "fp16"),
        ("LAZYEMBED_ISOLATION", "thread"),
        ("LAZYEMBED_CACHE_MEMORY_MB", "-1"),
        ("LAZYEMBED_CACHE_MAX_MB", "inf"),
        ("LAZYEMBED_CACHE_MAX_MB", "0"),
        ("LAZYEMBED_PRESSURE_PSI_AVG10", "0"),
        ("LAZYEMBED_PRESSURE_CGROUP_FRACTION", "0"),
        ("LAZYEMBED_PRESSURE_PSI_AVG10", "101"),
        ("LAZYEMBED_PRESSURE_CHECK_INTERVAL", "never"),
        ("LAZYEMBED_GRACEFUL_TIMEOUT", "0"),
        ("LAZYEMBED_INTRA_OP_THREADS", "0"),
        ("LAZYEMBED_PREPACK_WEIGHTS", "sometimes"),
        ("LAZYEMBED_PREPACK_WEIGHTS", "2"),
        ("LAZYEMBED_HOST", "  "),
        ("LAZYEMBED_URL", "localhost:80"),
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


@pytest.mark.parametrize("key", ["secret ", " secret", "secret\n"])
def test_an_api_key_with_surrounding_whitespace_is_refused(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.setenv("LAZYEMBED_API_KEY", key)
    with pytest.raises(ConfigError, match=r"api_key.*whitespace") as info:
        load_settings()
    assert "secret" not in str(info.value)  # a key is never echoed


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("idle_timeout = nan", "idle_timeout"),
        ("idle_timeout = inf", "idle_timeout"),
        ("idle_timeout = 1e400", "idle_timeout"),
        ('idle_timeout = "abc"', "idle_timeout"),
        ("idle_timeout = true", "idle_timeout"),
        ('allow_download = "perhaps"', "allow_download"),
        ("allow_download = 2", "allow_download"),
        ('encode_batch_size = "many"', "encode_batch_size"),
        ("encode_batch_size = true", "encode_batch_size"),
        ("port = 0", "port"),
        ("model = 5", "model"),
        ("model_cache_dir = 3", "model_cache_dir"),
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


def test_a_utf16_or_binary_config_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for content in ('idle_timeout = "5m"\n'.encode("utf-16"), b"\xff\xfe\x00\x01garbage"):
        path = write_config(tmp_path, monkeypatch, content)
        with pytest.raises(ConfigError, match="not UTF-8 text") as info:
            load_settings()
        assert str(path) in str(info.value)


def test_missing_explicit_config_file_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAZYEMBED_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"LAZYEMBED_CONFIG.*no such config file"):
        load_settings()


def test_an_explicit_config_directory_is_an_error_that_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAZYEMBED_CONFIG", str(tmp_path))
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings()


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(ConfigError, match=r"idle_timeout=nan from argument"):
        load_settings(idle_timeout=float("nan"))
    with pytest.raises(ConfigError, match=r"encode_batch_size=True from argument"):
        load_settings(encode_batch_size=True)
    with pytest.raises(ConfigError, match=r"cache_memory_mb=1\d+\.\.\. from argument"):
        load_settings(cache_memory_mb=10**400)
    with pytest.raises(ConfigError, match="unknown setting 'idle_timeot' from argument"):
        load_settings(idle_timeot="5m")


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(AttributeError):
        s.idle_timeout = KeepAlive.FOREVER  # type: ignore[misc]


def test_effective_threads() -> None:
    assert effective_threads(Settings(intra_op_threads=3)) == 3
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    threads = effective_threads(Settings())
    assert threads >= 1 and (expected is None or threads == expected)


@pytest.mark.parametrize(
    ("value", "idle_timeout", "expected"),
    [
        ("auto", "never", "at_load"),  # loaded once per process: the faster calls win
        ("auto", "5m", "when_busy"),  # comes and goes: a quick reload, then faster calls
        ("auto", 0, "never"),  # unloaded after every call: never busy for long
        (True, "5m", "at_load"),
        ("on", "5m", "at_load"),
        (False, "never", "never"),
        ("0", "never", "never"),
    ],
)
def test_prepack_weights_auto_follows_the_idle_timeout(
    value: object, idle_timeout: object, expected: str
) -> None:
    settings = load_settings(prepack_weights=value, idle_timeout=idle_timeout)
    assert prepack_resolved(settings) == expected


def test_prepack_weights_from_env_and_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().prepack_weights == "auto"
    monkeypatch.setenv("LAZYEMBED_PREPACK_WEIGHTS", " Auto ")
    assert load_settings().prepack_weights == "auto"
    monkeypatch.setenv("LAZYEMBED_PREPACK_WEIGHTS", "yes")
    assert load_settings().prepack_weights is True
    with pytest.raises(ConfigError, match="expected auto, true or false"):
        load_settings(prepack_weights=1.5)
