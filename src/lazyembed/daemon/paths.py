"""Where the daemon lives: its private runtime folder, socket, lock, pid and log files.

The runtime folder is ``$XDG_RUNTIME_DIR/lazyembed/`` when that variable names a real
folder owned by us, else ``/tmp/lazyembed-<uid>/``. Either is created 0700 and then
checked (`ensure_private_dir`): a folder that exists but is a symlink, is not ours or is
open to others is refused with `RuntimeDirError`, never used or "fixed" — another user
may have pre-created it to catch our socket. File names carry the lazyembed version, so
a client only ever meets a daemon of its own version. A socket path longer than
``sun_path`` allows falls back to a short hashed name in the /tmp folder (same checks).
Only the standard library is imported: every client imports this module.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lazyembed._version import __version__
from lazyembed.errors import LazyEmbedError

SUN_PATH_MAX = 107  # bytes of a Unix socket path (108 with the terminating NUL)
TMP_ROOT = Path("/tmp")


class RuntimeDirError(LazyEmbedError, OSError):
    """The runtime folder is unsafe (not ours, a symlink, open to others) or cannot be
    created; clients then run in-process (with one warning), the daemon refuses to start."""


@dataclass(frozen=True)
class DaemonPaths:
    """Every path of one daemon version for one user (nothing is created by building it)."""

    runtime_dir: Path
    socket: Path
    lock: Path
    pid: Path
    log: Path
    version: str

    @property
    def private_dirs(self) -> tuple[Path, ...]:
        """The folders `ensure` creates and checks: the runtime dir and the socket's."""
        if self.socket.parent == self.runtime_dir:
            return (self.runtime_dir,)
        return (self.runtime_dir, self.socket.parent)

    def ensure(self) -> None:
        """Create (0700) and check the private folders; `RuntimeDirError` if unsafe."""
        for folder in self.private_dirs:
            ensure_private_dir(folder)


def _safe_version(version: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", version)


def _owned_dir(path: str) -> bool:
    """A real folder (not a symlink) owned by this user."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def runtime_dir(env: Mapping[str, str] | None = None, tmp_root: Path = TMP_ROOT) -> Path:
    """``$XDG_RUNTIME_DIR/lazyembed`` if that is our own folder, else /tmp/lazyembed-<uid>."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg) and _owned_dir(xdg):
        return Path(xdg) / "lazyembed"
    return tmp_root / f"lazyembed-{os.getuid()}"


def log_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/lazyembed/daemon.log`` (default ~/.local/state/lazyembed/)."""
    env = os.environ if env is None else env
    state = env.get("XDG_STATE_HOME", "")
    base = Path(state) if state and os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "lazyembed" / "daemon.log"


def daemon_paths(
    version: str = __version__,
    *,
    env: Mapping[str, str] | None = None,
    tmp_root: Path = TMP_ROOT,
) -> DaemonPaths:
    """The paths of the daemon of ``version`` for this user (see the module docstring)."""
    folder = runtime_dir(env, tmp_root)
    name = f"daemon-{_safe_version(version)}"
    sock = folder / f"{name}.sock"
    if len(os.fsencode(sock)) > SUN_PATH_MAX:
        digest = hashlib.sha256(os.fsencode(sock)).hexdigest()[:16]
        sock = tmp_root / f"lazyembed-{os.getuid()}" / f"d-{digest}.sock"
    return DaemonPaths(
        runtime_dir=folder,
        socket=sock,
        lock=folder / f"{name}.lock",
        pid=folder / f"{name}.pid",
        log=log_path(env),
        version=version,
    )


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` owner-only (0700) if missing, then check it is ours and private.

    Refuses (`RuntimeDirError`) a symlink, a non-folder, another owner, or any group or
    other permission bit: such a folder is left untouched. The parent must exist.
    """
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        created = False
    except OSError as exc:
        raise RuntimeDirError(f"cannot create the runtime folder {path}: {exc}") from exc
    try:
        st = os.lstat(path)
        if created and stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)  # a umask may have dropped bits (ours: /tmp is sticky)
            st = os.lstat(path)
    except OSError as exc:
        raise RuntimeDirError(f"cannot check the runtime folder {path}: {exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise RuntimeDirError(f"refusing the runtime folder {path}: it is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"refusing the runtime folder {path}: it is not a folder")
    if st.st_uid != os.getuid():
        raise RuntimeDirError(
            f"refusing the runtime folder {path}: owned by uid {st.st_uid}, not {os.getuid()}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o700:
        raise RuntimeDirError(
            f"refusing the runtime folder {path}: mode {mode:04o}, expected 0700 "
            "(remove it or chmod 700 it if it is yours)"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise RuntimeDirError(f"the runtime folder {path} is not writable")
