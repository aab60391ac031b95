"""What happened to one lifecycle: counters by reason and a bounded ring of events.

Owned by its `Lifecycle` and written only under that Lifecycle's lock; it keeps no lock
of its own. The counters survive the bounded ring, so `/metrics` never undercounts.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from lazyembed import memory


class Journal:
    """Loads, unloads and failures: counts, the last of each, and recent events."""

    def __init__(self, max_events: int) -> None:
        self.loads = 0
        self.unloads = 0
        self.load_failures = 0
        self.last_load_ms: float | None = None
        self.last_unload: dict[str, Any] | None = None
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_events)
        # {"load": {"first_use": 1, "reload": 4}, "unload": {"idle": 3, ...}, ...}
        self.by_reason: collections.defaultdict[str, collections.Counter[str]] = (
            collections.defaultdict(collections.Counter)
        )

    def record(self, kind: str, reason: str, ms: float, mb: float) -> dict[str, Any]:
        event: dict[str, Any] = {
            "time": time.time(),
            "kind": kind,
            "reason": reason,
            "ms": round(ms, 2),
            "mb": round(mb, 2),
        }
        self.events.append(event)
        self.by_reason[kind][reason] += 1
        return event

    def loaded(self, reason: str, ms: float, mb: float) -> None:
        self.loads += 1
        self.last_load_ms = round(ms, 2)
        self.record("load", reason, ms, mb)

    def load_failed(self, reason: str, ms: float, error: BaseException) -> None:
        self.load_failures += 1
        self.record("load_failed", reason, ms, 0.0)["error"] = str(error)

    def unloaded(
        self,
        reason: str,
        ms: float,
        before: int | None,
        after: int | None,
        note: str | None = None,
    ) -> dict[str, Any]:
        """Record an unload with the RSS measured around it (None: not measured)."""
        returned = 0.0 if before is None or after is None else (before - after) / memory.MB
        self.unloads += 1
        self.last_unload = {
            "reason": reason,
            "rss_before_mb": None if before is None else memory.to_mb(before),
            "rss_after_mb": None if after is None else memory.to_mb(after),
            "returned_mb": round(returned, 2),
            "ms": round(ms, 2),
        }
        event = self.record("unload", reason, ms, returned)
        if note:
            event["note"] = note
        return self.last_unload
