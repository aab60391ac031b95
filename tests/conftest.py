"""Test-wide set-up: one converted-model cache per test session, no user config.

Every Embedder in the session (and every subprocess a test starts) converts the model
once into the same temporary cache, and ignores any config file of the developer.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="lazyembed-tests-"))
_KEPT = "LAZYEMBED_MODEL_CACHE_DIR"


def pytest_configure(config: pytest.Config) -> None:
    """Before any test module is imported: a private cache, config and data dir."""
    os.environ[_KEPT] = str(_SESSION_DIR / "cache")
    os.environ["XDG_CONFIG_HOME"] = str(_SESSION_DIR / "config")
    os.environ["XDG_DATA_HOME"] = str(_SESSION_DIR / "data")
    for key in [k for k in os.environ if k.startswith("LAZYEMBED_") and k != _KEPT]:
        del os.environ[key]
    # In-process unless a test asks for the shared daemon (share=, daemon_helpers.py): a
    # CLI `embed` would otherwise start a daemon that outlives the test.
    os.environ["LAZYEMBED_SHARE"] = "never"


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def model_dir() -> Path:
    from lazyembed.models.resolve import resolve_model

    return resolve_model(None).directory


@pytest.fixture(scope="session")
def shared_embedder() -> Iterator[object]:
    """One real Embedder (cache off) for tests that only need vectors.

    Never idle (tests must not race its unload), yet with the weights not pre-packed:
    the layout a default Embedder (which has an idle timeout) runs, so its vectors are
    bit-identical to the CLI's, the server's and the integrations' defaults.
    """
    from lazyembed import Embedder

    embedder = Embedder(cache_memory_mb=0, idle_timeout="never", prepack_weights=False)
    yield embedder
    embedder.close()
