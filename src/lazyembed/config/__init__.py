"""Settings and durations: the edge where user-given values become typed ones.

`settings.py` holds every setting (grouped, defaults defined once, file ← env ←
arguments); `durations.py` is the one parser of durations and keep-alives.
"""

from __future__ import annotations

from lazyembed.config.durations import (
    MAX_DURATION_S,
    KeepAlive,
    KeepAliveLike,
    parse_duration,
    parse_keep_alive,
    parse_positive_seconds,
)
from lazyembed.config.settings import (
    CONFIG_ENV,
    ENV_PREFIX,
    KEYS,
    RENAMED,
    Backend,
    CacheSettings,
    Isolation,
    Precision,
    PrepackMode,
    PrepackWeights,
    PressureSettings,
    ServerSettings,
    Settings,
    Share,
    Variant,
    config_file,
    default_cache_path,
    default_config_file,
    effective_cache_path,
    effective_threads,
    for_model,
    load_settings,
    model_onnx_file,
    prepack_resolved,
    resolve_share,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "KEYS",
    "MAX_DURATION_S",
    "RENAMED",
    "Backend",
    "CacheSettings",
    "Isolation",
    "KeepAlive",
    "KeepAliveLike",
    "Precision",
    "PrepackMode",
    "PrepackWeights",
    "PressureSettings",
    "ServerSettings",
    "Settings",
    "Share",
    "Variant",
    "config_file",
    "default_cache_path",
    "default_config_file",
    "effective_cache_path",
    "effective_threads",
    "for_model",
    "load_settings",
    "model_onnx_file",
    "parse_duration",
    "parse_keep_alive",
    "parse_positive_seconds",
    "prepack_resolved",
    "resolve_share",
]
