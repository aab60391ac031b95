"""One registry of what must be reset in a child process after ``os.fork()``.

Modules that hold locks, connections or process handles register a callback with
`after_fork_in_child`; one ``os.register_at_fork`` hook runs them in registration order
(module import order), so a reader can see every fork rule by grepping for this name.
A callback must be cheap and must not raise: it runs in the child before any other code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger("lazyembed")

_CALLBACKS: list[Callable[[], None]] = []


def after_fork_in_child(callback: Callable[[], None]) -> Callable[[], None]:
    """Run ``callback`` in every child forked from now on; usable as a decorator."""
    _CALLBACKS.append(callback)
    return callback


def _run_callbacks() -> None:
    for callback in _CALLBACKS:
        try:
            callback()
        except Exception:  # one bad reset must not leave the others undone
            log.exception("lazyembed: after-fork reset %r failed", callback)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run_callbacks)
