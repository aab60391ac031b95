"""Starting the daemon once, whoever asks first: `ensure_daemon`, and a tiny `call`.

Under a start race (8 clients at once), every client first tries to connect; those that
find nobody take the lock file, look again, and only the first spawns. The spawned
daemon binds exclusively (server.py), so even a spawn that slipped past the lock cannot
produce a second listener. The daemon is detached: started through ``sh -c '... &'`` in a
new session, so it is never our child (no zombie, no signal from our terminal), with
stdin /dev/null and stdout/stderr appended to the log file (/dev/null if that cannot be
written). Light imports only: clients import this module.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from lazyembed.daemon.paths import DaemonPaths
from lazyembed.daemon.protocol import (
    Meta,
    exception_from,
    hello_meta,
    recv_frame,
    send_frame,
)
from lazyembed.errors import LazyEmbedError

DAEMON_COMMAND = ("-m", "lazyembed", "daemon", "run")
_POLL_S = 0.02


class DaemonStartError(LazyEmbedError, RuntimeError):
    """No daemon could be started (or reached) in time; clients then run in-process."""


def connect(path: Path | str, timeout: float | None = 5.0) -> socket.socket | None:
    """A connected socket to the daemon at ``path``, or None if nothing answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def _answers(path: Path) -> bool:
    sock = connect(path, timeout=2.0)
    if sock is None:
        return False
    sock.close()
    return True


def ensure_daemon(paths: DaemonPaths, timeout: float = 30.0) -> Path:
    """The socket of a running daemon, spawning one if none answers (see module doc).

    Raises `RuntimeDirError` (unsafe or unwritable runtime folder) or `DaemonStartError`
    (the lock could not be taken, the spawned daemon exited without anyone answering, or
    nothing answered within ``timeout``).
    """
    paths.ensure()
    if _answers(paths.socket):
        return paths.socket
    deadline = time.monotonic() + timeout
    try:
        with FileLock(str(paths.lock), timeout=timeout):
            if _answers(paths.socket):  # another client started it while we waited
                return paths.socket
            pid = spawn_daemon(paths)
            while time.monotonic() < deadline:
                if _answers(paths.socket):
                    return paths.socket
                if pid is not None and not _alive(pid):
                    if _answers(paths.socket):  # it lost a bind race to another daemon
                        return paths.socket
                    raise DaemonStartError(
                        f"the lazyembed daemon (pid {pid}) exited at start; see {paths.log}"
                    )
                time.sleep(_POLL_S)
    except Timeout:
        pass
    except OSError as exc:  # the lock file cannot be created (full disk, ...)
        raise DaemonStartError(f"cannot take the daemon's lock {paths.lock}: {exc}") from exc
    if _answers(paths.socket):
        return paths.socket
    raise DaemonStartError(
        f"no lazyembed daemon answered on {paths.socket} within {timeout:g} s (see {paths.log})"
    )


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (it is not our child: init reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _log_file(paths: DaemonPaths) -> int:
    """An fd appending to the daemon's log, or /dev/null if it cannot be written."""
    try:
        paths.log.parent.mkdir(parents=True, exist_ok=True)
        return os.open(paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY)


def spawn_daemon(paths: DaemonPaths, env: dict[str, str] | None = None) -> int | None:
    """Start ``python -m lazyembed daemon run`` detached (not our child); its pid.

    ``sh`` starts it in the background, tells its pid and exits: the daemon is then
    reparented, never a zombie of ours, in sh's new session, with stdout and stderr on
    the log. None if the pid could not be read (the caller then only polls the socket)."""
    log_fd = _log_file(paths)
    try:
        script = '"$@" </dev/null 2>&1 & echo $! >&2'
        launcher = subprocess.Popen(
            ["/bin/sh", "-c", script, "sh", sys.executable, *DAEMON_COMMAND],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
        _, said = launcher.communicate(timeout=30)
    finally:
        os.close(log_fd)
    try:
        return int(said.split()[-1])
    except (ValueError, IndexError):
        return None


def call(path: Path | str, op: str, *, timeout: float = 10.0, **fields: Any) -> Meta:
    """One request on a fresh connection (hello first): for the CLI and tests.

    Raises the typed error of an error answer, or OSError when nothing answers."""
    sock = connect(path, timeout)
    if sock is None:
        raise ConnectionRefusedError(f"no lazyembed daemon answers on {path}")
    with contextlib.closing(sock):
        hello = hello_meta({})
        for request in (hello, {"op": op, "id": 1, **fields}):
            send_frame(sock, request)
            answer, _ = recv_frame(sock)
            if not answer.get("ok"):
                raise exception_from(answer)
        return answer
