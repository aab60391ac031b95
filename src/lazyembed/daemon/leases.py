"""Pure bookkeeping of the daemon, testable with a fake clock: per-client leases, idle exit.

`ClientLeases` keeps each connection's keep-alive leases on one model apart, so that a
client that goes away takes its leases with it; the model's `Lifecycle` gets their union
through `Lifecycle.reset_leases`. `IdleExit` decides when the daemon leaves by itself.
Neither holds a lock: their owners do (docs/ARCHITECTURE.md, "The shared daemon").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lazyembed.config.durations import KeepAlive

_NEG_INF = -math.inf


@dataclass
class _Lease:
    default_done: float | None = None  # this client's last call under the default lease
    explicit_until: float = _NEG_INF  # its latest explicit keep-alive expiry
    pinned: bool = False

    def live(self, now: float) -> bool:
        """A pin or an unexpired explicit lease (the default lease is judged elsewhere)."""
        return self.pinned or self.explicit_until > now


@dataclass(frozen=True)
class Aggregate:
    """What the lifecycle gets: `Lifecycle.reset_leases(**aggregate.as_kwargs())`."""

    default_since: float | None
    explicit_until: float | None
    pinned: bool

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "default_since": self.default_since,
            "explicit_until": self.explicit_until,
            "pinned": self.pinned,
        }


class ClientLeases:
    """Each client's leases on one model; the rule is the in-process one, over the union.

    A call under the default lease restarts that client's default lease; an explicit
    keep-alive (0 included) leaves an expiry instead, the longest one winning; a pin
    holds until released. The union: the latest default lease, the latest explicit
    expiry, a pin if anyone pins. When a client disconnects, its pin or live explicit
    lease turns into a default lease from that moment (the idle timeout then applies);
    when it releases, its leases just go, and if nobody else holds any the model's
    leases expire now (it unloads).
    """

    def __init__(self) -> None:
        self._by_client: dict[int, _Lease] = {}
        # The default lease that clients who disconnected left behind (their last
        # default call, or the moment a live pin/explicit lease of theirs went).
        self._left: float | None = None

    def __len__(self) -> int:
        return len(self._by_client)

    def record(self, client: int, keep_alive: KeepAlive, now: float) -> None:
        """After a model call of ``client`` with ``keep_alive``."""
        lease = self._by_client.get(client)
        if lease is None:
            lease = self._by_client[client] = _Lease()
        if keep_alive.is_default:
            lease.default_done = now
        elif keep_alive.is_forever:
            lease.pinned = True
        else:
            lease.explicit_until = max(lease.explicit_until, now + keep_alive.seconds)

    def aggregate(self) -> Aggregate:
        defaults = [x.default_done for x in self._by_client.values() if x.default_done is not None]
        if self._left is not None:
            defaults.append(self._left)
        explicit = max((x.explicit_until for x in self._by_client.values()), default=_NEG_INF)
        return Aggregate(
            default_since=max(defaults) if defaults else None,
            explicit_until=None if explicit == _NEG_INF else explicit,
            pinned=any(x.pinned for x in self._by_client.values()),
        )

    def disconnect(self, client: int, now: float) -> Aggregate | None:
        """``client`` went away: its leases go, a live one leaves a default lease from now.
        None when it held nothing here (nothing to change)."""
        lease = self._by_client.pop(client, None)
        if lease is None:
            return None
        since = now if lease.live(now) else lease.default_done
        if since is not None and (self._left is None or since > self._left):
            self._left = since
        return self.aggregate()

    def release(self, client: int, now: float) -> Aggregate:
        """``client`` lets go (unload_model()): without the leases of other connected
        clients, expire all now (clients that left have no say any more)."""
        self._by_client.pop(client, None)
        self._left = None
        union = self.aggregate()
        if union.default_since is None and union.explicit_until is None and not union.pinned:
            return Aggregate(None, now, False)
        return union

    def clear(self) -> None:
        """The model was unloaded, which ends every lease (as in-process): forget them."""
        self._by_client.clear()
        self._left = None

    def holders(self, now: float) -> list[dict[str, Any]]:
        """Per client (for `status`): pinned, seconds of explicit lease left, last default."""
        return [
            {
                "client": client,
                "pinned": lease.pinned,
                "explicit_left_s": round(max(0.0, lease.explicit_until - now), 3)
                if lease.explicit_until > _NEG_INF
                else None,
                "default_age_s": None
                if lease.default_done is None
                else round(now - lease.default_done, 3),
            }
            for client, lease in self._by_client.items()
        ]


class IdleExit:
    """The daemon exits once nothing was busy (a model loaded, a call in flight) for
    ``after`` seconds (None: never). `poll()` is called on a timer; effects injected."""

    def __init__(
        self,
        after: float | None,
        *,
        busy: Callable[[], bool],
        on_exit: Callable[[], object],
        clock: Callable[[], float],
    ) -> None:
        self.after = after
        self._busy = busy
        self._on_exit = on_exit
        self._clock = clock
        self._since = clock()  # nothing is loaded at start: the countdown starts now
        self.exited = False

    def poll(self) -> bool:
        """Check now; True (once) when it called ``on_exit``."""
        now = self._clock()
        if self._busy():
            self._since = now
            return False
        if self.exited or self.after is None or now - self._since < self.after:
            return False
        self.exited = True
        self._on_exit()
        return True

    def seconds_left(self) -> float | None:
        """Until the exit if nothing gets busy (None: never), as of the last poll."""
        if self.after is None:
            return None
        return max(0.0, self._since + self.after - self._clock())
