"""Real daemon processes in private runtime folders: the start race, SIGTERM, the idle
exit, and ``lazyembed daemon start|status|stop``. Teardown kills whatever is left (by pid)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from daemon_helpers import DaemonEnv, private_daemon_env
from helpers import wait_until
from lazyembed.daemon.spawn import call


@pytest.fixture
def daemon_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonEnv]:
    yield from private_daemon_env(monkeypatch)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


RACER = """
import os, sys, time
from lazyembed.daemon.paths import daemon_paths
from lazyembed.daemon.spawn import call, ensure_daemon
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.005)
path = ensure_daemon(daemon_paths(), timeout=120)
answer = call(path, "embed", timeout=120, texts=["racer %s" % os.getpid()])
status = call(path, "status")
print(answer["shape"], status["pid"])
"""


def test_eight_clients_starting_at_once_spawn_exactly_one_daemon(daemon_env: DaemonEnv) -> None:
    go = daemon_env.root / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(go)],
            env=daemon_env.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    go.touch()
    outputs = [racer.communicate(timeout=300) for racer in racers]
    assert [r.returncode for r in racers] == [0] * 8, [err for _, err in outputs]
    lines = [out.split() for out, _ in outputs]
    assert all(line[:2] == ["[1,", "384]"] for line in lines), lines
    daemon_pids = {line[2] for line in lines}
    assert len(daemon_pids) == 1
    assert daemon_env.daemon_pids() == [int(daemon_pids.pop())]
    status = call(daemon_env.paths.socket, "status")
    assert status["clients_served"] >= 16 and status["models"][0]["texts"] == 8


def test_sigterm_lets_the_call_in_flight_finish_then_removes_the_socket(
    daemon_env: DaemonEnv,
) -> None:
    started = daemon_env.run(["daemon", "start", "--json"])
    assert started.returncode == 0, started.stderr
    pid = json.loads(started.stdout)["pid"]
    assert daemon_env.paths.pid.read_text().strip() == str(pid)
    answer: dict[str, Any] = {}
    texts = [f"text number {i} " + "word " * 150 for i in range(256)]

    def big_call() -> None:
        answer.update(call(daemon_env.paths.socket, "embed", timeout=300, texts=texts))

    caller = threading.Thread(target=big_call)
    caller.start()
    assert wait_until(
        lambda: answer or call(daemon_env.paths.socket, "status")["in_flight"] >= 1, limit=120
    )
    os.kill(pid, signal.SIGTERM)
    caller.join(300)
    assert answer.get("ok") and answer["shape"] == [256, 384], answer
    assert wait_until(lambda: pid_gone(pid), limit=120)
    assert not daemon_env.paths.socket.exists() and not daemon_env.paths.pid.exists()
    assert "stopped" in (daemon_env.paths.log.read_text())


def test_the_daemon_exits_by_itself_when_no_model_is_loaded(
    daemon_env: DaemonEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazyembed.daemon.spawn import ensure_daemon
    from lazyembed.errors import LazyEmbedError

    # For the daemon that ensure_daemon spawns (it inherits this environment):
    monkeypatch.setenv("LAZYEMBED_DAEMON_IDLE_EXIT", "1s")
    monkeypatch.setenv("PYTHONPATH", daemon_env.env["PYTHONPATH"])
    answer: dict[str, Any] = {}
    for _ in range(10):  # on a slow machine it may leave before our first call: start again
        path = ensure_daemon(daemon_env.paths, timeout=120)
        pid = int(daemon_env.paths.pid.read_text())
        try:
            # keep_alive 0: the model unloads right after the call; a second later the
            # daemon goes.
            answer = call(path, "embed", timeout=120, texts=["x"], keep_alive=0)
            break
        except (OSError, LazyEmbedError):
            continue
    assert answer["ok"], answer
    assert wait_until(lambda: pid_gone(pid), limit=120)
    assert not daemon_env.paths.socket.exists() and not daemon_env.paths.pid.exists()
    assert "no model loaded for 1s" in daemon_env.paths.log.read_text()


def test_the_cli_starts_reports_and_stops_the_daemon(daemon_env: DaemonEnv) -> None:
    absent = daemon_env.run(["daemon", "status"])
    assert absent.returncode == 3 and "not running" in absent.stdout
    assert daemon_env.run(["daemon", "start"]).returncode == 0
    again = daemon_env.run(["daemon", "start", "--json"])  # already running: the same one
    assert again.returncode == 0
    pid = json.loads(again.stdout)["pid"]
    assert daemon_env.daemon_pids() == [pid]
    call(daemon_env.paths.socket, "embed", texts=["status shows me"], keep_alive="pin")
    text = daemon_env.run(["daemon", "status"])
    assert text.returncode == 0
    assert f"pid {pid}" in text.stdout and str(daemon_env.paths.socket) in text.stdout
    assert "all-MiniLM-L6-v2" in text.stdout and "daemon_idle_exit=" in text.stdout
    status = json.loads(daemon_env.run(["daemon", "status", "--json"]).stdout)
    assert status["running"] and status["pid"] == pid and status["clients_served"] >= 3
    assert status["models"][0]["state"] == "loaded"
    stopped = daemon_env.run(["daemon", "stop"])
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert wait_until(lambda: pid_gone(pid), limit=120)
    assert daemon_env.run(["daemon", "stop"]).stdout.strip() == "lazyembed daemon: not running"


def test_a_socket_passed_by_systemd_is_served_and_left_in_place(daemon_env: DaemonEnv) -> None:
    import socket as socketlib

    path = daemon_env.root / "activated.sock"
    listener = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    fd = listener.fileno()
    # As systemd does: the socket as fd 3, LISTEN_PID = the daemon's own pid (exec keeps it).
    launcher = (
        "import os, sys\n"
        "fd = int(sys.argv[1])\n"
        "if fd != 3:\n"
        "    os.dup2(fd, 3)\n"
        "    os.close(fd)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'lazyembed', 'daemon', 'run'])\n"
    )
    with (daemon_env.root / "activated.log").open("w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-c", launcher, str(fd)],
            env=daemon_env.env,
            pass_fds=(fd,),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    listener.close()
    try:
        try:
            answer = call(path, "embed", timeout=120, texts=["activated"])
        except OSError:
            daemon.wait(60)
            raise AssertionError((daemon_env.root / "activated.log").read_text()) from None
        assert answer["ok"] and answer["shape"] == [1, 384]
        assert call(path, "status")["pid"] == daemon.pid
        assert not daemon_env.paths.socket.exists()  # it made no socket of its own
        call(path, "stop")
        assert daemon.wait(120) == 0
        assert path.exists()  # systemd's socket file stays
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def test_an_unwritable_log_folder_does_not_stop_the_daemon(daemon_env: DaemonEnv) -> None:
    blocker = daemon_env.root / "state-is-a-file"
    blocker.write_text("")
    daemon_env.env["XDG_STATE_HOME"] = str(blocker)  # the log folder cannot be made
    started = daemon_env.run(["daemon", "start", "--json"])
    assert started.returncode == 0, started.stderr
    assert call(daemon_env.paths.socket, "embed", texts=["no log"])["shape"] == [1, 384]
    assert daemon_env.run(["daemon", "stop"]).returncode == 0


def test_a_daemon_that_dies_at_start_fails_fast_with_a_typed_error(
    daemon_env: DaemonEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazyembed.daemon import spawn

    monkeypatch.setattr(
        spawn, "DAEMON_COMMAND", ("-c", "import sys; print('broken install'); sys.exit(3)")
    )
    with pytest.raises(spawn.DaemonStartError, match="exited at start"):
        spawn.ensure_daemon(daemon_env.paths, timeout=300)  # not waited out
    assert "broken install" in daemon_env.paths.log.read_text()
    assert stat_mode(daemon_env.paths.log) == 0o600


def stat_mode(path: os.PathLike[str]) -> int:
    import stat

    return stat.S_IMODE(os.stat(path).st_mode)
