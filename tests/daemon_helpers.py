"""Daemons for tests: private runtime/state folders, in-process or real processes, and
a teardown that stops and (if needed) kills every daemon a test started, by pid.

A spawned daemon is detached (its own session, reparented): it is not a child of pytest,
so teardown finds it by its command line and its private XDG_RUNTIME_DIR, and asserts it
is gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from helpers import wait_until
from lazyembed import __version__
from lazyembed.daemon.paths import DaemonPaths, daemon_paths
from lazyembed.daemon.protocol import PROTOCOL_VERSION, Meta, recv_frame, send_frame

SRC = str(Path(__file__).resolve().parent.parent / "src")
TESTS = str(Path(__file__).resolve().parent)


@dataclass
class DaemonEnv:
    """A private place for daemons: env for subprocesses, the paths they will use."""

    root: Path
    env: dict[str, str]
    paths: DaemonPaths
    threads: list[tuple[Any, threading.Thread]] = field(default_factory=list)

    def run(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """``python -m lazyembed ARGS`` with this env (captured, text, bounded)."""
        return subprocess.run(
            [sys.executable, "-m", "lazyembed", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=kwargs.pop("timeout", 120),
            **kwargs,
        )

    def daemon_pids(self) -> list[int]:
        """Live daemon processes of this env (found by command line and runtime dir)."""
        pids = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                cmd = proc.info["cmdline"] or []
                if cmd[-4:] != ["-m", "lazyembed", "daemon", "run"]:
                    continue
                if proc.environ().get("XDG_RUNTIME_DIR") != self.env["XDG_RUNTIME_DIR"]:
                    continue
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                pids.append(proc.pid)
            except (psutil.Error, OSError):
                continue
        return pids

    def start_in_process(self, **kwargs: Any) -> Any:
        """A `Daemon` serving in a thread of this process (stopped at teardown)."""
        from lazyembed.daemon.server import Daemon

        daemon = Daemon(self.paths, **kwargs)
        daemon.bind()
        thread = threading.Thread(target=daemon.serve_forever, daemon=True)
        thread.start()
        self.threads.append((daemon, thread))
        return daemon


def make_env(root: Path) -> tuple[dict[str, str], DaemonPaths]:
    run = root / "run"
    run.mkdir(mode=0o700)
    env = dict(os.environ)
    env.update(
        XDG_RUNTIME_DIR=str(run),
        XDG_STATE_HOME=str(root / "state"),
        PYTHONPATH=os.pathsep.join([SRC, TESTS]),
    )
    env.pop("LAZYEMBED_SHARE", None)
    return env, daemon_paths(env=env)


def private_daemon_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonEnv]:
    """The body of a test module's ``daemon_env`` fixture (``yield from`` it): a short
    private root (socket paths stay under sun_path), removed at teardown, after every
    daemon it saw was stopped or killed."""
    root = Path(tempfile.mkdtemp(prefix="le-", dir="/tmp"))
    env, paths = make_env(root)
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    monkeypatch.setenv("XDG_STATE_HOME", env["XDG_STATE_HOME"])
    denv = DaemonEnv(root, env, paths)
    try:
        yield denv
    finally:
        for daemon, thread in denv.threads:
            daemon.request_stop()
            thread.join(60)
        leftover = denv.daemon_pids()
        for pid in leftover:
            os.kill(pid, signal.SIGTERM)
        if leftover and not wait_until(lambda: not denv.daemon_pids(), limit=30):
            for pid in denv.daemon_pids():
                os.kill(pid, signal.SIGKILL)
        still = wait_until(lambda: not denv.daemon_pids(), limit=30)
        shutil.rmtree(root, ignore_errors=True)
        assert still, f"daemon processes left behind: {denv.daemon_pids()}"
        assert all(not t.is_alive() for _, t in denv.threads), "a daemon thread did not stop"


class Conn:
    """A raw protocol connection (hello sent) for tests."""

    def __init__(self, path: Path | str, *, hello: bool = True, timeout: float = 120.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self._id = 0
        if hello:
            answer = self.request(
                "hello",
                protocol=PROTOCOL_VERSION,
                version=__version__,
                pid=os.getpid(),
                settings={},
            )
            assert answer["ok"], answer

    def request(self, op: str, payload: bytes = b"", **fields: Any) -> Meta:
        meta, _ = self.request_raw(op, **fields)
        return meta

    def request_raw(self, op: str, **fields: Any) -> tuple[Meta, bytes]:
        self._id += 1
        send_frame(self.sock, {"op": op, "id": self._id, **fields})
        return recv_frame(self.sock)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
