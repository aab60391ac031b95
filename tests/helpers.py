"""Helpers shared by tests: polling waits and copies of the real model folder.

Waits poll with generous limits and never assert a duration (machines are noisy).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path


def wait_until(predicate: Callable[[], object], limit: float = 60.0, step: float = 0.01) -> bool:
    """True as soon as ``predicate()`` is true; False if it still is not after ``limit``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def model_copy(model_dir: Path, destination: Path) -> Path:
    """A copy of a model folder (a different model name with the same weights)."""
    shutil.copytree(model_dir, destination, symlinks=True)
    return destination
