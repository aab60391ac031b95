"""The lease rule: what a finished call (or a cache hit) leaves behind, and when it ends.

`Leases` is plain state owned by one `Lifecycle` and guarded by that Lifecycle's lock (it
has no lock of its own and knows nothing of the Lifecycle: lifecycle.py imports this
module, never the reverse). The rule, as tests/test_lifecycle.py specifies it:

- A **pin** (keep-alive FOREVER) holds until an explicit unload (or a pressure or budget
  unload, which outrank it).
- An **explicit** keep-alive of k seconds (0 included) leases until its call finished + k;
  of several, the latest expiry holds, so one caller's 0 never cuts another caller's hour.
- The **default** lease (calls that gave no keep-alive) lasts from the last such call
  for the *current* idle timeout ("never": until replaced). An explicit keep-alive
  *replaces* it: a client that says "this long" overrides the server's default, so a 0
  after plain calls unloads. A later plain call renews the default lease again, beside
  the explicit ones; the longest live lease wins.

The model may unload when no lease is live and no call is in flight.
"""

from __future__ import annotations

import math

_INF = math.inf
_NEG_INF = -math.inf


class Leases:
    """The live leases of one Lifecycle (see the module docstring); its lock guards them.

    The fields are public to the owning Lifecycle, whose per-call hot path renews the
    default lease by writing ``default_done`` directly (the default branch of `record`).
    """

    __slots__ = ("default_done", "explicit_until", "pinned")

    def __init__(self) -> None:
        self.default_done: float | None = None  # when the last default-lease call finished
        self.explicit_until = _NEG_INF  # the latest explicit lease's expiry
        self.pinned = False

    def clear(self) -> None:
        """Forget every lease (an unload, a failed load, a fork)."""
        self.default_done = None
        self.explicit_until = _NEG_INF
        self.pinned = False

    def record(self, keep_alive: float | None, now: float) -> None:
        """Record the lease one call asks for at ``now``: None = the default lease,
        inf = a pin, else seconds. An explicit one replaces the default lease."""
        if keep_alive is None:
            self.default_done = now
            return
        self.default_done = None
        if keep_alive == _INF:
            self.pinned = True
        else:
            until = now + keep_alive
            if until > self.explicit_until:
                self.explicit_until = until

    def deadline(self, idle_timeout: float | None) -> tuple[float, str]:
        """(when the longest live lease ends, its unload reason); inf = none ends.

        ``idle_timeout`` is the current one in seconds (None = never). With no lease at
        all the answer is inf: only a recorded lease can end.
        """
        if self.pinned:
            return _INF, "keep_alive"
        deadline, reason = self.explicit_until, "keep_alive"
        if self.default_done is not None:
            if idle_timeout is None:  # a default lease under "never" holds the model
                return _INF, "idle"
            default = self.default_done + idle_timeout
            if default >= deadline:
                deadline, reason = default, "idle"
        return (_INF if deadline == _NEG_INF else deadline), reason
