"""Moving a bad store file aside (with its -wal and -shm) so a fresh one can be built.

A bad file is renamed ``<name>.<kind>-<UTC time>``, never deleted: it may be someone
else's data. Its -wal must move with it, or SQLite would replay it into the new store.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime, timezone
from pathlib import Path

SIDECARS = ("-wal", "-shm")


class _SidecarNotMoved(OSError):
    """The main file was moved aside but one of its sidecar files was not.

    Private: only `SQLiteStore._quarantine` sees it, and degrades the cache instead of
    raising; no caller of lazyembed ever gets one.
    """

    def __init__(self, target: Path, suffix: str, cause: OSError) -> None:
        super().__init__(f"moved it to {target} but not its {suffix}: {cause}")
        self.target = target


def move_aside(path: Path, kind: str) -> Path | None:
    """Rename `path` and its sidecars to ``<name>.<kind>-<time>``; the new name, or None if
    `path` no longer exists (someone else moved it). Raises OSError when the file cannot
    be moved, `_SidecarNotMoved` when the file moved but a sidecar could not."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.{kind}-{stamp}")
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    for suffix in SIDECARS:
        try:
            os.rename(f"{path}{suffix}", f"{target}{suffix}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _SidecarNotMoved(target, suffix, exc) from exc
    return target


def remove_orphan_sidecars(path: Path) -> None:
    """After the store file was deleted: remove the -wal and -shm it left behind, so a new
    store at `path` does not share them with connections still open on the deleted file.
    Nothing is removed once a file exists at `path` again (someone built a new store)."""
    for suffix in SIDECARS:
        if path.exists():
            return
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            os.unlink(f"{path}{suffix}")
