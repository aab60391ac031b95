"""The client side of the shared daemon: one connection per process, and when not to use it.

`DaemonClient.call` sends one request and reads its answer. It says hello on a new
connection (another version -> never used again), retries once on a fresh connection
when the daemon went away mid-call (EOF, reset, broken pipe: with ``share="always"`` it
starts a new daemon, with ``"auto"`` it reconnects only if one runs) and raises
`DaemonUnavailable` when the caller must run in-process instead: the daemon did not
answer within ``daemon_call_timeout`` (hung, e.g. SIGSTOPped), none runs ("auto"), it
could not be started, the runtime folder is unsafe or unwritable. After such a failure the
client stays in-process for a while (`NO_DAEMON_RETRY_S`, `HUNG_RETRY_S`) instead of paying
the failure again on every call; each kind of failure warns once per process.

Locks: ``DaemonClient._lock`` is held for one whole request/answer (and the connect and
hello before it), so threads take turns on the one connection (the daemon batches across
processes, not across one process's threads). A forked child gets a fresh lock and no
connection (`lazyembed._fork.after_fork_in_child`): it opens its own on its first call.
Only the standard library and light lazyembed modules are imported here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import Any

from lazyembed._fork import after_fork_in_child
from lazyembed._version import __version__
from lazyembed.config import KeepAlive, Settings, effective_cache_path
from lazyembed.daemon.paths import DaemonPaths, RuntimeDirError, daemon_paths
from lazyembed.daemon.protocol import (
    PROTOCOL_VERSION,
    REQUEST_OPTIONS,
    ConnectionClosed,
    Meta,
    ProtocolError,
    VersionMismatchError,
    exception_from,
    hello_meta,
    recv_frame,
    send_frame,
)
from lazyembed.errors import ClosedError, LazyEmbedError

log = logging.getLogger("lazyembed")

#: After "no daemon runs" (share="auto") or a failed start: in-process this long, then
#: the next call looks for a daemon again (a connect attempt costs microseconds).
NO_DAEMON_RETRY_S = 30.0
#: After a call timed out (a hung daemon): in-process this long before trying it again,
#: so a stopped daemon costs one timeout per five minutes, not one per call.
HUNG_RETRY_S = 300.0
#: Connect and hello wait at most this long (or daemon_call_timeout, if shorter): a live
#: daemon answers hello on its connection thread at once, whatever its models are doing,
#: so only a hung (e.g. SIGSTOPped) one takes longer, and a new client must not wait a
#: whole call timeout in its constructor to find that out.
HELLO_TIMEOUT_S = 5.0
_DYING_PAUSES_S = (0.02, 0.1, 0.3)  # between opens that met a dying daemon at hello
_STOPPING_PAUSE_S = 0.05  # a daemon said "stopping": it closes its listener right away

#: The settings that belong to the daemon, not to a request (compared at hello).
DAEMON_LEVEL_KEYS = (
    "memory_budget_mb",
    "max_loaded_models",
    "load_timeout",
    "idle_timeout",
    "daemon_idle_exit",
    "cache_memory_mb",
    "cache_persistent",
    "cache_path",
    "cache_max_mb",
)


class _DiedAtHello(Exception):
    """Internal: the connection broke during hello (a daemon on its way out)."""


class DaemonUnavailable(LazyEmbedError):
    """Internal: this call must run in-process (the reason is in the message). Caught
    inside the package; a LazyEmbedError should it ever escape."""


class DaemonFallbackWarning(LazyEmbedError, RuntimeWarning):
    """The shared daemon could not be used: the calls run in this process instead."""


def daemon_level_settings(settings: Settings) -> dict[str, Any]:
    """The hello "settings" dict: the daemon-level settings as JSON values."""
    cache = settings.cache
    return {
        "memory_budget_mb": settings.memory_budget_mb,
        "max_loaded_models": settings.max_loaded_models,
        "load_timeout": settings.load_timeout,
        "idle_timeout": str(settings.idle_timeout),
        "daemon_idle_exit": str(settings.daemon_idle_exit),
        "cache_memory_mb": cache.memory_mb,
        "cache_persistent": cache.persistent,
        "cache_path": str(effective_cache_path(settings)),
        "cache_max_mb": cache.max_mb,
    }


def request_options(settings: Settings) -> dict[str, Any]:
    """The vector-affecting settings of a request (paths made absolute: the daemon's
    working folder is not the client's)."""
    options: dict[str, Any] = {key: getattr(settings, key) for key in REQUEST_OPTIONS}
    options["model_cache_dir"] = str(Path(settings.model_cache_dir).expanduser().absolute())
    return options


def model_for_request(spec: str | None) -> str | None:
    """A model spec as the daemon must see it: a local folder as an absolute path."""
    if spec is None:
        return None
    if spec.startswith((".", "~")) or (os.sep in spec and Path(spec).expanduser().exists()):
        return str(Path(spec).expanduser().absolute())
    return spec


def keep_alive_wire(value: KeepAlive) -> float | str | None:
    """A parsed keep-alive as the protocol spells it: null, seconds, or "pin"."""
    if value.is_default:
        return None
    return "pin" if value.is_forever else value.seconds


def differing_settings(mine: dict[str, Any], theirs: object) -> list[str]:
    """The daemon-level keys whose values differ between a client and its daemon."""
    if not isinstance(theirs, dict):
        return []
    return [key for key in DAEMON_LEVEL_KEYS if key in theirs and theirs[key] != mine.get(key)]


def platform_supported() -> bool:
    """Unix sockets with peer credentials: Linux and the BSDs/macOS, not Windows (yet)."""
    return hasattr(socket, "AF_UNIX") and sys.platform != "win32"


class DaemonClient:
    """This process's connection to the daemon at one socket path (see the module doc)."""

    def __init__(self, paths: DaemonPaths) -> None:
        self.paths = paths
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timeout: float | None = None
        self._next_id = 1
        self._hello: Meta | None = None
        self._unusable_until = 0.0  # monotonic time before which calls run in-process
        self._reason = ""
        self._warned: set[str] = set()
        self._compared: set[tuple[int, tuple[str, ...]]] = set()
        self.retries = 0  # calls retried on a new connection (for tests and status)
        _LIVE.add(self)

    # ---- state ------------------------------------------------------------------------

    @property
    def hello(self) -> Meta | None:
        """The daemon's hello answer on the current connection (pid, version, settings)."""
        return self._hello

    def usable(self) -> bool:
        """False while this client is in its in-process period after a failure."""
        return time.monotonic() >= self._unusable_until

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's connection (never shut it down: the
        parent still uses it), take a fresh lock."""
        self._lock = threading.Lock()
        sock, self._sock, self._hello = self._sock, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()  # closes the child's copy of the descriptor only

    def close(self) -> None:
        """Close the connection (the daemon then drops this process's leases)."""
        with self._lock:
            self._drop()

    def ensure(self, settings: Settings, share: str) -> None:
        """Connect now (see `call`); a connected client only compares the settings."""
        with self._lock:
            if time.monotonic() < self._unusable_until:
                raise DaemonUnavailable(self._reason)
            if self._sock is None:
                self._open(settings, share)
            else:
                self.compare_settings(settings)

    # ---- one request --------------------------------------------------------------------

    def call(
        self, meta: Meta, settings: Settings, share: str, payload: bytes = b""
    ) -> tuple[Meta, bytes]:
        """Send ``meta`` (+ payload) and return the answer (meta, payload).

        Raises the answer's typed error (`lazyembed.errors`) when the daemon refused the
        request, `DaemonUnavailable` when the caller must run it in-process.
        """
        with self._lock:
            if time.monotonic() < self._unusable_until:
                raise DaemonUnavailable(self._reason)
            for attempt in (0, 1):
                sock = self._sock or self._open(settings, share)
                meta["id"] = self._next_id
                self._next_id += 1
                try:
                    self._set_timeout(sock, settings.daemon_call_timeout)
                    send_frame(sock, meta, payload)
                    answer, data = recv_frame(sock)
                except TimeoutError:
                    self._drop()  # the answer may still come: this stream is out of step
                    raise self._unusable(
                        "hung",
                        HUNG_RETRY_S,
                        f"the lazyembed daemon did not answer within daemon_call_timeout="
                        f"{settings.daemon_call_timeout:g}s; running in this process "
                        f"(the daemon is tried again in {HUNG_RETRY_S:g}s)",
                    ) from None
                except (OSError, ConnectionClosed, ProtocolError) as exc:
                    # EOF, reset, broken pipe, a frame cut short: the daemon went away.
                    self._drop()
                    if attempt == 0:
                        self.retries += 1
                        log.info("lazyembed daemon connection lost (%s); retrying once", exc)
                        continue
                    raise self._unusable(
                        "lost",
                        NO_DAEMON_RETRY_S,
                        f"the lazyembed daemon went away twice during one call ({exc}); "
                        "running in this process",
                    ) from None
                if answer.get("id") != meta["id"]:
                    self._drop()
                    raise self._unusable(
                        "protocol", NO_DAEMON_RETRY_S, "the lazyembed daemon answered out of step"
                    )
                if not answer.get("ok"):
                    error = exception_from(answer)
                    if isinstance(error, VersionMismatchError):
                        self._drop()
                        raise self._unusable("version", math.inf, f"{error}; running in-process")
                    if isinstance(error, ClosedError):  # the daemon is stopping (idle exit)
                        self._drop()
                        if attempt == 0:
                            self.retries += 1
                            time.sleep(_STOPPING_PAUSE_S)  # let it close its listener
                            continue
                        raise self._unusable(
                            "lost", NO_DAEMON_RETRY_S, f"the lazyembed daemon is stopping ({error})"
                        )
                    raise error
                return answer, data
        raise AssertionError("unreachable")  # pragma: no cover

    def _set_timeout(self, sock: socket.socket, seconds: float) -> None:
        if self._timeout != seconds:
            sock.settimeout(seconds)
            self._timeout = seconds

    def _drop(self) -> None:
        sock, self._sock, self._hello, self._timeout = self._sock, None, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _unusable(self, kind: str, seconds: float, message: str) -> DaemonUnavailable:
        """Enter the in-process period; warn once per kind of failure per process."""
        self._unusable_until = time.monotonic() + seconds
        self._reason = message
        if kind not in self._warned and kind != "absent":
            self._warned.add(kind)
            warnings.warn(message, DaemonFallbackWarning, stacklevel=5)
        log.info("%s", message)
        return DaemonUnavailable(message)

    # ---- connecting ---------------------------------------------------------------------

    def _open(self, settings: Settings, share: str) -> socket.socket:
        """A connected, hello'd socket; starts the daemon when share is "always".

        A daemon killed a moment ago may still accept a connection on its way out (its
        listener closes last) and then reset it at hello: that is tried again a few
        times, briefly, so that the next attempt meets the socket gone or a new daemon."""
        for pause in _DYING_PAUSES_S:
            try:
                return self._open_once(settings, share)
            except _DiedAtHello:
                time.sleep(pause)
        try:
            return self._open_once(settings, share)
        except _DiedAtHello as exc:
            raise self._unusable(
                "lost", NO_DAEMON_RETRY_S, f"the lazyembed daemon closed at hello ({exc})"
            ) from None

    def _open_once(self, settings: Settings, share: str) -> socket.socket:
        try:
            sock = self._connect(settings)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if share != "always":
                raise self._unusable(
                    "absent", NO_DAEMON_RETRY_S, f"no lazyembed daemon runs ({exc})"
                ) from None
            try:
                self.start_daemon()
                sock = self._connect(settings)
            except (OSError, LazyEmbedError) as exc2:
                raise self._unusable(
                    "start",
                    NO_DAEMON_RETRY_S,
                    f"cannot start or reach the lazyembed daemon ({exc2}); running in this process",
                ) from None
        except TimeoutError:
            raise self._unusable(
                "hung",
                HUNG_RETRY_S,
                "the lazyembed daemon did not accept the connection within "
                f"{_hello_timeout(settings):g}s; running in this process",
            ) from None
        except OSError as exc:
            raise self._unusable(
                "connect", NO_DAEMON_RETRY_S, f"cannot reach the lazyembed daemon ({exc})"
            ) from None
        try:
            self._say_hello(sock, settings)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        return sock

    def start_daemon(self) -> None:
        """Start the daemon (one under a start race; returns when it listens)."""
        self.paths.ensure()
        from lazyembed.daemon.spawn import ensure_daemon  # not needed when one runs

        ensure_daemon(self.paths)

    def _connect(self, settings: Settings) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_hello_timeout(settings))
            sock.connect(str(self.paths.socket))
        except BaseException:
            sock.close()
            raise
        self._timeout = _hello_timeout(settings)  # `call` sets the call timeout after hello
        return sock

    def _say_hello(self, sock: socket.socket, settings: Settings) -> None:
        mine = daemon_level_settings(settings)
        hello = hello_meta(mine)
        try:
            send_frame(sock, hello)
            answer, _ = recv_frame(sock)
        except TimeoutError:
            raise self._unusable(
                "hung",
                HUNG_RETRY_S,
                f"the lazyembed daemon did not answer hello within "
                f"{_hello_timeout(settings):g}s; running in this process",
            ) from None
        except (OSError, ConnectionClosed, ProtocolError) as exc:
            raise _DiedAtHello(str(exc)) from None
        if not answer.get("ok"):
            error = exception_from(answer)
            raise self._unusable(
                "version" if isinstance(error, VersionMismatchError) else "refused",
                math.inf if isinstance(error, VersionMismatchError) else NO_DAEMON_RETRY_S,
                f"the lazyembed daemon at {self.paths.socket} refused this client "
                f"({type(error).__name__}: {error}); running in this process",
            )
        if answer.get("protocol") != PROTOCOL_VERSION or answer.get("version") != __version__:
            raise self._unusable(
                "version",
                math.inf,
                f"the lazyembed daemon at {self.paths.socket} runs version "
                f"{answer.get('version')!r} (protocol {answer.get('protocol')!r}), this client "
                f"{__version__!r}; running in this process",
            )
        self._hello = answer
        self.compare_settings(settings)

    def compare_settings(self, settings: Settings) -> list[str]:
        """Warn once (per daemon and set of names) when daemon-level settings differ."""
        hello = self._hello
        if hello is None:
            return []
        names = differing_settings(daemon_level_settings(settings), hello.get("settings"))
        key = (int(hello.get("pid") or 0), tuple(names))
        if names and key not in self._compared:
            self._compared.add(key)
            warnings.warn(
                f"the running lazyembed daemon (pid {hello.get('pid')}) has other daemon-level "
                f"settings than this process: {', '.join(names)}; the daemon's apply "
                "(`lazyembed daemon status` shows them; restart it to change them)",
                DaemonFallbackWarning,
                stacklevel=4,
            )
        return names


def _hello_timeout(settings: Settings) -> float:
    return min(settings.daemon_call_timeout, HELLO_TIMEOUT_S)


_LIVE: weakref.WeakSet[DaemonClient] = weakref.WeakSet()
_CLIENTS: dict[Path, DaemonClient] = {}
_clients_lock = threading.Lock()  # guards _CLIENTS only


@after_fork_in_child
def _after_fork_in_child() -> None:
    global _clients_lock
    _clients_lock = threading.Lock()
    for client in list(_LIVE):
        client._after_fork()


def client_for(paths: DaemonPaths | None = None) -> DaemonClient:
    """This process's client of the daemon at ``paths`` (default: this user's, now)."""
    paths = paths if paths is not None else daemon_paths()
    client = _CLIENTS.get(paths.socket)
    if client is None:
        with _clients_lock:
            client = _CLIENTS.setdefault(paths.socket, DaemonClient(paths))
    return client


def close_all() -> None:
    """Close and forget every client of this process (tests; a process about to exec)."""
    with _clients_lock:
        clients = list(_CLIENTS.values())
        _CLIENTS.clear()
    for client in clients:
        client.close()


def connect(settings: Settings, share: str) -> DaemonClient | None:
    """The process's client if the daemon can be used now (connecting, and with
    ``share="always"`` starting it); None to run in-process (warned where it matters)."""
    try:
        client = client_for()
    except RuntimeDirError as exc:  # pragma: no cover - daemon_paths creates nothing
        _warn_once("paths", f"lazyembed daemon: {exc}; running in this process")
        return None
    if share == "auto" and client._sock is None and not client.paths.socket.exists():
        return None  # the common "no daemon" case: one stat, no warning
    try:
        client.ensure(settings, share)
    except DaemonUnavailable:
        return None
    return client


_process_warned: set[str] = set()


def _warn_once(kind: str, message: str) -> None:
    if kind not in _process_warned:
        _process_warned.add(kind)
        warnings.warn(message, DaemonFallbackWarning, stacklevel=4)
