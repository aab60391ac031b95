"""Every setting of lazyembed, grouped by concern, each default defined once.

Precedence, lowest to highest: defaults ← TOML file ← ``LAZYEMBED_<KEY>`` environment ←
keyword arguments of `load_settings` (``None`` there means "not given"). Keys are flat
names (``idle_timeout``, ``cache_memory_mb``, ``port``); a TOML file may also group them
in tables named after the groups (``[cache] memory_mb = 64``). `KEYS` is the table of
every key: its group, its field and its parser. Renamed keys keep working with a
`DeprecationWarning` (`RENAMED`). Every invalid value raises `ConfigError` naming the
key, the value and its source.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import platformdirs

from lazyembed.config.durations import (
    KeepAlive,
    config_error,
    parse_duration,
    parse_positive_seconds,
)
from lazyembed.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]

log = logging.getLogger("lazyembed")

APP_NAME = "lazyembed"
ENV_PREFIX = "LAZYEMBED_"
CONFIG_ENV = "LAZYEMBED_CONFIG"

Variant = Literal["fp32", "int8"]
Backend = Literal["onnxruntime", "openvino"]
Precision = Literal["fp32", "bf16", "auto"]
Isolation = Literal["none", "process"]
#: Whether Embedder/Models use the user's shared daemon: never; auto (one that already
#: runs, never starting one); always (starting it when none runs).
Share = Literal["never", "auto", "always"]
#: Pre-pack the weights for ONNX Runtime's matrix kernels: True (at load), False, or
#: "auto" (at load when the model never idles out, else once a load is busy).
PrepackWeights = bool | Literal["auto"]
#: When a session's weights are pre-packed: at load, once the load is busy (see
#: runtime/onnx.py), or never.
PrepackMode = Literal["at_load", "when_busy", "never"]


def _default_model_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / APP_NAME


def default_cache_path() -> Path:
    """Where the persistent embedding cache lives unless `cache_path` says otherwise."""
    return Path(platformdirs.user_data_dir(APP_NAME)) / "cache.sqlite3"


def default_config_file() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


DEFAULT_IDLE_TIMEOUT = KeepAlive.after(1800.0)
#: The library's share mode when the setting is not given (`lazyembed embed`: "always").
DEFAULT_SHARE: Share = "auto"
DEFAULT_DAEMON_IDLE_EXIT = KeepAlive.after(300.0)


@dataclass(frozen=True)
class CacheSettings:
    """The embedding cache (vectors by text), not the converted-model cache."""

    memory_mb: float = 32.0  # 0 disables the in-memory LRU
    persistent: bool = False
    path: Path | None = None  # None → default_cache_path()
    max_mb: float = 512.0


@dataclass(frozen=True)
class PressureSettings:
    """Unloading the model when the machine runs short of memory (off by default)."""

    unload: bool = False
    check_interval: float = 5.0
    psi_avg10: float = 10.0
    min_available_mb: float = 256.0
    cgroup_fraction: float = 0.95


@dataclass(frozen=True)
class ServerSettings:
    """`lazyembed serve` and the CLI's client commands."""

    host: str = "127.0.0.1"
    port: int = 11435
    url: str | None = None  # where client commands find a server; None → http://host:port
    api_key: str | None = None
    max_inputs_per_request: int = 2048
    max_chars_per_input: int = 100_000
    max_body_bytes: int = 16 * 2**20
    # 0: a lone request runs at once; requests arriving while a batch runs form the next
    # one anyway. A wait (ms) also gathers a burst that reaches an idle server together.
    batch_wait_ms: float = 0.0
    batch_max_inputs: int = 64
    batch_max_tokens: int = 4096
    graceful_timeout: float = 30.0
    # Seconds a request's whole body may take to arrive (from the request's start): a
    # stalled or trickling upload is answered 408 and its connection closed.
    body_timeout: float = 10.0
    # Models served besides `model` (names, aliases or folders), and whether a request
    # may name any other catalogue model or local folder (loaded on demand).
    models: tuple[str, ...] = ()
    any_model: bool = False

    @property
    def client_url(self) -> str:
        return self.url or f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """Every setting of the project; build it with `load_settings`, not directly."""

    model: str | None = None
    model_cache_dir: Path = field(default_factory=_default_model_cache_dir)
    allow_download: bool = False
    variant: Variant = "fp32"
    # The transformer's ONNX export inside the model folder to run instead of converting
    # model.safetensors (sentence-transformers' model_kwargs={"file_name": ...}); None:
    # convert natively when lazyembed can, else onnx/model.onnx (models/onnx_export.py).
    onnx_file: str | None = None
    # Per model (name, alias or folder → export file): overrides onnx_file for that model,
    # so one server or Models registry runs each model from its own export (for_model).
    onnx_files: tuple[tuple[str, str], ...] = ()
    backend: Backend = "onnxruntime"  # "openvino": the lazyembed[openvino] extra
    # OpenVINO's inference precision; "auto": bf16 if the CPU has it. bf16 vectors meet min
    # cosine >= 0.9999 against fp32 ONNX Runtime (fp32: >= 0.99999; tests/test_openvino.py).
    precision: Precision = "fp32"
    encode_batch_size: int = 32  # texts per ONNX run
    prepack_weights: PrepackWeights = "auto"  # faster calls, slower (re)loads; see runtime/onnx.py
    intra_op_threads: int | None = None  # None → CPUs this process may run on
    idle_timeout: KeepAlive = DEFAULT_IDLE_TIMEOUT
    max_events: int = 64
    isolation: Isolation = "none"
    worker_call_timeout: float = 120.0  # isolated worker: seconds a call may wait (+1 s/text)
    # Several models in one process (lazyembed.Models): measured MB and count at once.
    memory_budget_mb: float | None = None  # None = unlimited
    max_loaded_models: int = 3
    load_timeout: float = 60.0  # seconds a load may wait for room before ModelBusyError
    # The shared per-user daemon (lazyembed.daemon). share None = not given: the library
    # uses DEFAULT_SHARE ("auto"), `lazyembed embed` uses "always" (see resolve_share).
    share: Share | None = None
    daemon_idle_exit: KeepAlive = DEFAULT_DAEMON_IDLE_EXIT  # the daemon exits when idle
    daemon_call_timeout: float = 60.0  # a client waits this long for an answer
    cache: CacheSettings = field(default_factory=CacheSettings)
    pressure: PressureSettings = field(default_factory=PressureSettings)
    server: ServerSettings = field(default_factory=ServerSettings)


def _deprecated_flat_name(self: Settings, name: str) -> Any:
    """Old flat names (``settings.cache_memory_mb``, ``settings.host``) still read, with
    a DeprecationWarning. Attached after the class so that mypy keeps checking our code."""
    key = RENAMED.get(name, name)
    spec = KEYS.get(key)
    if spec is None or (spec.group is None and key == name):
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
    warnings.warn(
        f"Settings.{name} is deprecated; use Settings.{spec.path}",
        DeprecationWarning,
        stacklevel=2,
    )
    return spec.read(self)


Settings.__getattr__ = _deprecated_flat_name  # type: ignore[attr-defined]


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
    raise config_error(key, value, source, "expected true/false/1/0/yes/no/on/off")


def _int(lo: int, hi: int | None = None, *, optional: str | None = None) -> Parser:
    def parse(value: object, key: str, source: str) -> int | None:
        if optional is not None and isinstance(value, str) and value.strip().lower() == optional:
            return None
        if isinstance(value, bool):
            raise config_error(key, value, source, "expected an integer, not a boolean")
        number: int
        if isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str):
            try:
                number = int(value.strip())  # Python's own digit grouping: 1_000, not 1__0
            except ValueError:
                raise config_error(key, value, source, "expected an integer") from None
        else:
            raise config_error(key, value, source, "expected an integer")
        if number < lo or (hi is not None and number > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise config_error(key, value, source, f"must be {bounds}")
        return number

    return parse


def _float(lo: float, hi: float | None = None, *, lo_open: bool = False) -> Parser:
    def parse(value: object, key: str, source: str) -> float:
        if isinstance(value, bool):
            raise config_error(key, value, source, "expected a number, not a boolean")
        if isinstance(value, (int, float)):
            try:
                number = float(value)
            except OverflowError:  # an int beyond any float
                raise config_error(key, value, source, "must be a finite number") from None
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise config_error(key, value, source, "expected a number") from None
        else:
            raise config_error(key, value, source, "expected a number")
        if not math.isfinite(number):
            raise config_error(key, value, source, "must be a finite number")
        if number < lo or (lo_open and number == lo) or (hi is not None and number > hi):
            low = f"> {lo}" if lo_open else f">= {lo}"
            raise config_error(
                key, value, source, f"must be {low}" + (f" and <= {hi}" if hi is not None else "")
            )
        return number

    return parse


def _optional_float(word: str, *, lo: float) -> Parser:
    """A number > lo, or ``word`` (or "none") for None."""
    number = _float(lo, lo_open=True)

    def parse(value: object, key: str, source: str) -> float | None:
        if isinstance(value, str) and value.strip().lower() in (word, "none"):
            return None
        return float(number(value, key, source))

    return parse


def _bool_or_auto(value: object, key: str, source: str) -> bool | Literal["auto"]:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool | str | int):
        try:
            return _parse_bool(value, key, source)
        except ConfigError:
            pass
    raise config_error(key, value, source, "expected auto, true or false")


def _choice(*choices: str) -> Parser:
    def parse(value: object, key: str, source: str) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise config_error(key, value, source, f"expected one of {', '.join(choices)}")

    return parse


def _string(*, empty_ok: bool) -> Parser:
    def parse(value: object, key: str, source: str) -> str:
        if not isinstance(value, str):
            raise config_error(key, value, source, "expected a string")
        if not empty_ok and not value.strip():
            raise config_error(key, value, source, "must not be empty")
        return value

    return parse


def _secret(value: object, key: str, source: str) -> str:
    """A key compared byte for byte: surrounding whitespace is surely a paste mistake."""
    text = _string(empty_ok=False)(value, key, source)
    if text != text.strip():
        raise config_error(key, "<hidden>", source, "has leading or trailing whitespace")
    return str(text)


def _url(value: object, key: str, source: str) -> str:
    text = str(_string(empty_ok=False)(value, key, source)).strip().rstrip("/")
    if not text.startswith(("http://", "https://")):
        raise config_error(key, value, source, "expected an http:// or https:// URL")
    return text


def _names(value: object, key: str, source: str) -> tuple[str, ...]:
    """A list of model names: a TOML array, or a comma-separated string (env)."""
    items: list[object]
    if isinstance(value, str):
        items = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise config_error(key, value, source, "expected a list of model names")
    if not all(isinstance(item, str) and item.strip() for item in items):
        raise config_error(key, value, source, "expected non-empty model names")
    return tuple(str(item).strip() for item in items)


def _model_files(value: object, key: str, source: str) -> tuple[tuple[str, str], ...]:
    """Model → file pairs: a TOML table or mapping, or ``MODEL=FILE,MODEL=FILE`` (env)."""
    pairs: list[tuple[object, object]]
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, str):
        parts = [part for part in value.split(",") if part.strip()]
        if not all("=" in part for part in parts):
            raise config_error(key, value, source, "expected MODEL=FILE pairs, comma-separated")
        pairs = [tuple(part.rsplit("=", 1)) for part in parts]  # type: ignore[misc]
    elif isinstance(value, (list, tuple)) and all(
        isinstance(p, (list, tuple)) and len(p) == 2 for p in value
    ):
        pairs = [(p[0], p[1]) for p in value]
    else:
        raise config_error(key, value, source, "expected a table of model = file")
    if not all(
        isinstance(m, str) and m.strip() and isinstance(f, str) and f.strip() for m, f in pairs
    ):
        raise config_error(key, value, source, "expected non-empty model names and files")
    return tuple((str(m).strip(), str(f).strip()) for m, f in pairs)


def _path(value: object, key: str, source: str) -> Path:
    if isinstance(value, Path):
        return value.expanduser()
    if isinstance(value, str) and value.strip():
        return Path(value).expanduser()
    raise config_error(key, value, source, "expected a path")


def _duration(value: object, key: str, source: str) -> KeepAlive:
    return parse_duration(value, key=key, source=source)


def _positive_seconds(value: object, key: str, source: str) -> float:
    return parse_positive_seconds(value, key=key, source=source)


# ---- the key table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One flat setting key: which group and field it fills, and how it is parsed."""

    name: str
    group: str | None  # None = a top-level field of Settings
    field: str
    parse: Parser

    @property
    def path(self) -> str:
        return self.field if self.group is None else f"{self.group}.{self.field}"

    def read(self, settings: Settings) -> Any:
        holder = settings if self.group is None else getattr(settings, self.group)
        return getattr(holder, self.field)


def _keys() -> dict[str, Key]:
    top: dict[str, Parser] = {
        "model": _string(empty_ok=False),
        "model_cache_dir": _path,
        "allow_download": _parse_bool,
        "variant": _choice("fp32", "int8"),
        "onnx_file": _string(empty_ok=False),
        "onnx_files": _model_files,
        "backend": _choice("onnxruntime", "openvino"),
        "precision": _choice("fp32", "bf16", "auto"),
        "encode_batch_size": _int(1, 4096),
        "prepack_weights": _bool_or_auto,
        "intra_op_threads": _int(1, 1024, optional="auto"),
        "idle_timeout": _duration,
        "max_events": _int(1, 100_000),
        "isolation": _choice("none", "process"),
        "worker_call_timeout": _positive_seconds,
        "memory_budget_mb": _optional_float("unlimited", lo=0.0),
        "max_loaded_models": _int(1, 1000),
        "load_timeout": _positive_seconds,
        "share": _choice("never", "auto", "always"),
        "daemon_idle_exit": _duration,
        "daemon_call_timeout": _positive_seconds,
    }
    grouped: dict[str, dict[str, tuple[str, Parser]]] = {
        "cache": {
            "cache_memory_mb": ("memory_mb", _float(0.0)),
            "cache_persistent": ("persistent", _parse_bool),
            "cache_path": ("path", _path),
            "cache_max_mb": ("max_mb", _float(0.0, lo_open=True)),  # always bounded
        },
        "pressure": {
            "pressure_unload": ("unload", _parse_bool),
            "pressure_check_interval": ("check_interval", _positive_seconds),
            "pressure_psi_avg10": ("psi_avg10", _float(0.0, 100.0, lo_open=True)),
            "pressure_min_available_mb": ("min_available_mb", _float(0.0)),
            "pressure_cgroup_fraction": ("cgroup_fraction", _float(0.0, 1.0, lo_open=True)),
        },
        "server": {
            "host": ("host", _string(empty_ok=False)),
            "port": ("port", _int(1, 65535)),
            "url": ("url", _url),
            "api_key": ("api_key", _secret),
            "max_inputs_per_request": ("max_inputs_per_request", _int(1)),
            "max_chars_per_input": ("max_chars_per_input", _int(1)),
            "max_body_bytes": ("max_body_bytes", _int(1)),
            "server_batch_wait_ms": ("batch_wait_ms", _float(0.0, 60_000.0)),
            "server_batch_max_inputs": ("batch_max_inputs", _int(1)),
            "server_batch_max_tokens": ("batch_max_tokens", _int(1)),
            "graceful_timeout": ("graceful_timeout", _positive_seconds),
            "server_body_timeout": ("body_timeout", _positive_seconds),
            "serve_models": ("models", _names),
            "serve_any_model": ("any_model", _parse_bool),
        },
    }
    table = {name: Key(name, None, name, parse) for name, parse in top.items()}
    for group, members in grouped.items():
        for name, (field_name, parse) in members.items():
            table[name] = Key(name, group, field_name, parse)
    return table


KEYS: dict[str, Key] = _keys()

#: Old key → new key. The old one still works, with a DeprecationWarning.
RENAMED: dict[str, str] = {
    "cache_dir": "model_cache_dir",
    "batch_size": "encode_batch_size",
    "batch_wait_ms": "server_batch_wait_ms",
    "batch_max_size": "server_batch_max_inputs",
    "batch_max_tokens": "server_batch_max_tokens",
}
_GROUPS = {"cache": CacheSettings, "pressure": PressureSettings, "server": ServerSettings}


def _check_table() -> None:
    expected = {f.name for f in dataclasses.fields(Settings) if f.name not in _GROUPS}
    for group, cls in _GROUPS.items():
        expected |= {f"{group}.{f.name}" for f in dataclasses.fields(cls)}
    assert {k.path for k in KEYS.values()} == expected, "every setting needs one key"


_check_table()


def _apply(values: dict[str, Any], raw: Mapping[str, object], source: str) -> None:
    for name, value in raw.items():
        key = KEYS.get(name)
        if key is None and name in RENAMED:
            new = RENAMED[name]
            message = f"setting {name!r} (from {source}) is deprecated; use {new!r}"
            if source == "argument":  # a developer's call: the usual Python warning
                warnings.warn(message, DeprecationWarning, stacklevel=4)
            else:  # a user's file or environment: DeprecationWarning would be hidden
                log.warning("%s", message)
            key = KEYS[new]
        if key is None:
            raise ConfigError(
                f"unknown setting {name!r} from {source}; known: {', '.join(sorted(KEYS))}"
            )
        values[key.name] = key.parse(value, key.name, source)


def _flatten_file(data: dict[str, object], source: str) -> dict[str, object]:
    """Top-level keys as they are; ``[cache] memory_mb`` tables → ``cache_memory_mb``."""
    flat: dict[str, object] = {}
    for name, value in data.items():
        if name in _GROUPS and isinstance(value, dict):
            for member, inner in value.items():
                key = next(
                    (k.name for k in KEYS.values() if k.group == name and k.field == member),
                    None,
                )
                if key is None:
                    raise ConfigError(f"unknown setting {member!r} in table [{name}] from {source}")
                flat[key] = inner
        else:
            flat[name] = value
    return flat


def _read_file(path: Path) -> dict[str, object]:
    source = f"file {path}"
    try:
        with path.open("rb") as handle:
            data: dict[str, object] = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {source}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source} is not UTF-8 text (TOML must be): {exc.reason}") from exc
    except IsADirectoryError:
        raise ConfigError(f"{source} is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror or exc}") from exc
    return _flatten_file(data, source)


def config_file() -> tuple[Path, bool]:
    """The config file to read and whether it must exist (explicit via LAZYEMBED_CONFIG)."""
    explicit = os.environ.get(CONFIG_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser(), True
    return default_config_file(), False


def _build(values: Mapping[str, Any]) -> Settings:
    top: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS}
    for name, value in values.items():
        key = KEYS[name]
        if key.group is None:
            top[key.field] = value
        else:
            groups[key.group][key.field] = value
    if groups["cache"].get("path") is None:
        groups["cache"]["path"] = default_cache_path()
    for name, cls in _GROUPS.items():
        top[name] = cls(**groups[name])
    return Settings(**top)


def load_settings(**overrides: Any) -> Settings:
    """Defaults ← TOML file ← LAZYEMBED_* env ← keyword arguments (None = not given)."""
    values: dict[str, Any] = {}
    path, required = config_file()
    if required and not path.exists():
        raise ConfigError(f"{CONFIG_ENV}={str(path)!r}: no such config file")
    if required or path.is_file():
        _apply(values, _read_file(path), f"file {path}")
    for name, raw in sorted(os.environ.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or raw == "":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in KEYS or key in RENAMED:
            _apply(values, {key: raw}, f"env {name}")
        else:
            log.warning("ignoring unknown environment variable %s", name)
    _apply(values, {k: v for k, v in overrides.items() if v is not None}, "argument")
    return _build(values)


def for_model(settings: Settings, model: str) -> Settings:
    """The settings one model runs with: ``model`` set (canonical), and its own
    ``onnx_files`` entry in place of ``onnx_file`` (see `model_onnx_file`)."""
    from lazyembed.models.catalogue import canonical_name

    name = canonical_name(model)
    return dataclasses.replace(settings, model=name, onnx_file=model_onnx_file(settings, name))


def model_onnx_file(settings: Settings, model: str | None) -> str | None:
    """The export ``model`` runs: its ``onnx_files`` entry (matched by catalogue name or
    alias, or as the same folder), else ``onnx_file``."""
    from lazyembed.models.catalogue import canonical_name

    name = canonical_name(model)
    found = settings.onnx_file
    for key, file in settings.onnx_files:
        if _same_model(canonical_name(key), name):
            found = file
    return found


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    first, second = Path(a).expanduser(), Path(b).expanduser()
    return first.is_dir() and second.is_dir() and first.resolve() == second.resolve()


def effective_threads(settings: Settings) -> int:
    """intra_op_threads, or the CPUs this process may run on (affinity, else cpu_count)."""
    if settings.intra_op_threads is not None:
        return settings.intra_op_threads
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def prepack_resolved(settings: Settings) -> PrepackMode:
    """When this Embedder's sessions pre-pack their weights. ``true``: at load; ``false``:
    never. ``"auto"``: at load for a model that never idles out (its load is paid once per
    process, so the faster calls win); for one that comes and goes, once a load has done
    a few runs (the reload stays quick, a busy model gets the faster calls); never under
    an idle timeout of 0, which unloads after every call. An ONNX Runtime option: always
    "never" for another backend."""
    if settings.backend != "onnxruntime":
        return "never"
    if settings.prepack_weights == "auto":
        idle = settings.idle_timeout
        if idle.kind == "forever":
            return "at_load"
        return "never" if idle.kind == "seconds" and idle.seconds == 0 else "when_busy"
    return "at_load" if settings.prepack_weights else "never"


def resolve_share(settings: Settings, default: Share = DEFAULT_SHARE) -> Share:
    """The share mode: the setting when given (argument, env, file), else ``default``
    ("auto" for the library, "always" for `lazyembed embed`)."""
    return settings.share if settings.share is not None else default


def effective_cache_path(settings: Settings) -> Path:
    """The SQLite cache file (settings built without `load_settings` may hold None)."""
    return settings.cache.path or default_cache_path()
