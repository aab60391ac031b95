"""The daemon served from a thread of the test process, with the real model: ops, typed
errors, batching across clients, per-client leases, permissions, peer check, frames.

Real daemon processes (start race, SIGTERM, idle exit, the CLI) are in
test_daemon_server_processes.py.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon_helpers import Conn, DaemonEnv, private_daemon_env
from helpers import wait_until
from lazyembed.daemon import protocol
from lazyembed.daemon.protocol import HEADER, unpack_float32
from lazyembed.daemon.server import Daemon, DaemonRunningError
from lazyembed.errors import InputTypeError, InvalidInputError, PromptNotFoundError


@pytest.fixture
def daemon_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonEnv]:
    yield from private_daemon_env(monkeypatch)


TEXTS = ["the cat sat on the mat", "ONNX Runtime on two cores", "ünïcødé ✓", "a"]


def vectors(meta: dict[str, Any], payload: bytes) -> np.ndarray:
    assert meta["ok"], meta
    assert meta["dtype"] == "<f4"
    return np.asarray(unpack_float32(payload, meta["shape"]), dtype=np.float32)


def error_type(meta: dict[str, Any]) -> str:
    assert meta["ok"] is False, meta
    return str(meta["error"]["type"])


def model_status(conn: Conn) -> dict[str, Any]:
    models = conn.request("status")["models"]
    assert len(models) == 1, models
    return dict(models[0])


class Gate:
    """Holds the daemon's model calls until opened (so queued work is observable)."""

    def __init__(self, daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
        _, registry = daemon._registry({})
        self.embedder = registry.get(None)
        self.open = threading.Event()
        self.entered = threading.Event()
        self.calls: list[int] = []
        real = self.embedder.embed_numpy

        def gated(texts: list[str], **kwargs: Any) -> Any:
            self.entered.set()
            assert self.open.wait(120)
            self.calls.append(len(texts))
            return real(texts, **kwargs)

        monkeypatch.setattr(self.embedder, "embed_numpy", gated)


# ---- ops and vectors ----------------------------------------------------------------------


def test_vectors_are_the_in_process_ones(daemon_env: DaemonEnv, shared_embedder: Any) -> None:
    daemon_env.start_in_process()
    with Conn(daemon_env.paths.socket) as conn:
        meta, payload = conn.request_raw(
            "embed", model=None, texts=TEXTS, keep_alive=None, options={"prepack_weights": False}
        )
        got = vectors(meta, payload)
        assert got.shape == (4, 384)
        want = shared_embedder.embed_numpy(TEXTS)
        assert np.array_equal(got, want)  # same runtime settings: bit-identical
        meta, payload = conn.request_raw("embed", model=None, texts=TEXTS[:2], options={})
        assert np.abs(vectors(meta, payload) - want[:2]).max() <= 1e-6
        meta, payload = conn.request_raw(
            "embed", texts=TEXTS[:2], prompt="query: ", options={"prepack_weights": False}
        )
        prompted = shared_embedder.embed_numpy(TEXTS[:2], prompt="query: ")
        assert np.array_equal(vectors(meta, payload), prompted)
        assert not np.array_equal(prompted, want[:2])


def test_count_tokens_info_memory_set_idle_timeout(
    daemon_env: DaemonEnv, shared_embedder: Any
) -> None:
    daemon = daemon_env.start_in_process()
    with Conn(daemon_env.paths.socket) as conn:
        counts = conn.request("count_tokens", texts=["hello world", "x " * 600], truncate=True)
        assert counts["counts"] == shared_embedder.count_tokens(["hello world", "x " * 600])
        info = conn.request("info", model=None)
        assert info["ok"] and info["dimension"] == 384 and info["max_tokens"] == 256
        assert info["model"] == shared_embedder.model_name
        assert info["similarity_fn_name"] == "cosine"
        conn.request_raw("embed", texts=["one"])
        memory = conn.request("memory", model=None)
        assert memory["daemon"]["pid"] == os.getpid()
        assert memory["daemon"]["models_loaded"] == [shared_embedder.model_name]
        assert memory["models"][0]["model"] == shared_embedder.model_name
        assert conn.request("set_idle_timeout", model=None, seconds="never")["ok"]
        assert model_status(conn)["idle_timeout"] == "never"
        assert model_status(conn)["unload_in_s"] is None
        status = conn.request("status")
        assert status["pid"] == os.getpid() and status["clients"] == 1
        assert status["settings"] == daemon.daemon_settings()


def test_bad_requests_get_typed_errors_and_the_connection_lives_on(daemon_env: DaemonEnv) -> None:
    daemon_env.start_in_process()
    with Conn(daemon_env.paths.socket) as conn:
        for fields, cls in [
            ({"texts": []}, InvalidInputError),
            ({"texts": None}, InputTypeError),
            ({"texts": ["ok", 3]}, InputTypeError),
            ({"texts": ["ok"], "prompt_name": "nope"}, PromptNotFoundError),
        ]:
            meta = conn.request("embed", **fields)
            assert error_type(meta) == cls.__name__
            assert isinstance(protocol.exception_from(meta), cls)
        assert error_type(conn.request("embed", texts=["x"], options={"isolation": "process"})) == (
            "ConfigError"
        )
        assert error_type(conn.request("embed", texts=["x"], keep_alive="soon")) == "ConfigError"
        assert error_type(conn.request("frobnicate")) == "ProtocolError"
        meta, payload = conn.request_raw("embed", texts=["still fine"])
        assert vectors(meta, payload).shape == (1, 384)


def test_version_mismatch_and_a_missing_hello(daemon_env: DaemonEnv) -> None:
    daemon_env.start_in_process()
    with Conn(daemon_env.paths.socket, hello=False) as conn:
        assert error_type(conn.request("embed", texts=["x"])) == "ProtocolError"
        answer = conn.request("hello", protocol=1, version="0.0.0-other", pid=1, settings={})
        assert error_type(answer) == "VersionMismatch"
        assert "0.0.0-other" in answer["error"]["message"]
        assert error_type(conn.request("embed", texts=["x"])) == "VersionMismatch"
    with Conn(daemon_env.paths.socket, hello=False) as conn:
        answer = conn.request("hello", protocol=2, version=protocol.__dict__.get("x", "0"), pid=1)
        assert error_type(answer) == "VersionMismatch"


# ---- batching across clients -------------------------------------------------------------


def test_concurrent_one_text_requests_of_many_clients_share_one_model_call(
    daemon_env: DaemonEnv, shared_embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = daemon_env.start_in_process()
    gate = Gate(daemon, monkeypatch)
    texts = [f"client {i} says hello" for i in range(8)]
    results: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        with Conn(daemon_env.paths.socket) as conn:
            results[i] = vectors(*conn.request_raw("embed", texts=[texts[i]], options={}))

    with Conn(daemon_env.paths.socket) as watcher:
        first = threading.Thread(target=client, args=(0,))
        first.start()
        assert gate.entered.wait(60)  # client 0's call holds the model
        others = [threading.Thread(target=client, args=(i,)) for i in range(1, 8)]
        for t in others:
            t.start()
        assert wait_until(lambda: model_status(watcher)["queued"] == 7)
        gate.open.set()
        for t in [first, *others]:
            t.join(120)
        status = model_status(watcher)
    assert gate.calls == [1, 7]  # the seven queued requests ran as one call
    assert status["batches"] == 2 and status["texts"] == 8
    want = shared_embedder.embed_numpy(texts)
    for i in range(8):
        assert np.abs(results[i][0] - want[i]).max() <= 1e-6


def test_after_a_merged_call_the_batcher_waits_for_the_same_clients_next_requests(
    daemon_env: DaemonEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients that shared a call resend at once, but on few cores they get the CPU only
    after the call: the next call waits (briefly) until all of them are queued."""
    from lazyembed.daemon import server

    daemon = daemon_env.start_in_process()
    gate = Gate(daemon, monkeypatch)
    with (
        Conn(daemon_env.paths.socket) as first,
        Conn(daemon_env.paths.socket) as a,
        Conn(daemon_env.paths.socket) as b,
        Conn(daemon_env.paths.socket) as watcher,
    ):

        def send(conn: Conn, text: str) -> None:
            vectors(*conn.request_raw("embed", texts=[text], options={}))

        holder = threading.Thread(target=send, args=(first, "holds the model"))
        holder.start()
        assert gate.entered.wait(60)
        pair = [threading.Thread(target=send, args=(c, f"{n} queued")) for n, c in ((1, a), (2, b))]
        for t in pair:
            t.start()
        assert wait_until(lambda: model_status(watcher)["queued"] == 2)
        gate.open.set()
        for t in [holder, *pair]:
            t.join(120)
        assert gate.calls == [1, 2]  # a and b shared the second call
        (batcher,) = daemon._batchers.values()
        assert wait_until(lambda: batcher._last_clients == 2)
        # Make the wait's bounds long: only a's and b's requests can end it.
        monkeypatch.setattr(server, "LINGER_S", 120.0)
        batcher._last_call_s = 240.0
        later_a = threading.Thread(target=send, args=(a, "a again"))
        later_a.start()
        assert wait_until(lambda: model_status(watcher)["queued"] == 1)  # a waits for b
        send(b, "b again")
        later_a.join(120)
    assert gate.calls == [1, 2, 2]  # without the wait: [1, 2, 1, 1]


def test_a_big_request_goes_in_chunks_and_a_short_one_rides_in_the_next_call(
    daemon_env: DaemonEnv, shared_embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = daemon_env.start_in_process(max_batch_texts=10)
    gate = Gate(daemon, monkeypatch)
    big = [f"document {i} of a corpus being indexed" for i in range(25)]
    results: dict[str, np.ndarray] = {}

    def send(name: str, texts: list[str]) -> None:
        with Conn(daemon_env.paths.socket) as conn:
            results[name] = vectors(*conn.request_raw("embed", texts=texts))

    with Conn(daemon_env.paths.socket) as watcher:
        indexer = threading.Thread(target=send, args=("big", big))
        indexer.start()
        assert gate.entered.wait(60)  # the first chunk of the big request is in the model
        query = threading.Thread(target=send, args=("query", ["a short query"]))
        query.start()
        assert wait_until(lambda: model_status(watcher)["queued"] == 1)
        gate.open.set()
        for t in (indexer, query):
            t.join(120)
    assert gate.calls == [10, 10, 6]  # the query (1) rode along with the second chunk (9)
    assert np.abs(results["big"] - shared_embedder.embed_numpy(big)).max() <= 1e-6
    assert np.abs(results["query"] - shared_embedder.embed_numpy(["a short query"])).max() <= 1e-6


def test_long_texts_are_bounded_by_their_length_too(
    daemon_env: DaemonEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazyembed.daemon import server

    daemon = daemon_env.start_in_process()
    gate = Gate(daemon, monkeypatch)
    gate.open.set()
    long_texts = [f"{i} " + "long words " * 200 for i in range(30)]  # ~2200 characters each
    with Conn(daemon_env.paths.socket) as conn:
        assert vectors(*conn.request_raw("embed", texts=long_texts)).shape == (30, 384)
    per_call = server.MAX_BATCH_COST // server._MAX_TEXT_COST
    assert gate.calls == [per_call, 30 - per_call]


# ---- per-client leases ---------------------------------------------------------------------


def test_a_pin_leaves_with_its_client(daemon_env: DaemonEnv) -> None:
    daemon_env.start_in_process()
    with Conn(daemon_env.paths.socket) as watcher:
        with Conn(daemon_env.paths.socket) as pinner:
            pinner.request_raw("embed", texts=["pin me"], keep_alive="pin")
            status = model_status(watcher)
            assert status["pinned"] and status["unload_in_s"] is None
            assert [h["pinned"] for h in status["leases"]] == [True]
        # The pinning client is gone: its pin with it; the default idle timeout applies.
        assert wait_until(lambda: not model_status(watcher)["pinned"])
        status = model_status(watcher)
        assert status["state"] == "loaded" and status["leases"] == []
        assert status["unload_in_s"] is not None and status["unload_in_s"] > 60


def test_default_lease_calls_of_others_neither_drop_nor_keep_a_pin(daemon_env: DaemonEnv) -> None:
    daemon_env.start_in_process()
    with Conn(daemon_env.paths.socket) as other:
        with Conn(daemon_env.paths.socket) as pinner:
            pinner.request_raw("embed", texts=["pin"], keep_alive="pin")
            other.request_raw("embed", texts=["default lease"])
            status = model_status(other)
            assert status["pinned"] and len(status["leases"]) == 2
        assert wait_until(lambda: not model_status(other)["pinned"])
        other.request_raw("embed", texts=["default lease again"])
        status = model_status(other)
        assert not status["pinned"] and status["unload_in_s"] is not None


def test_warmup_loads_and_leaves_the_clients_lease(daemon_env: DaemonEnv) -> None:
    daemon_env.start_in_process()
    with Conn(daemon_env.paths.socket) as watcher:
        assert watcher.request("warmup", keep_alive=0)["ok"]
        status = model_status(watcher)
        assert status["state"] == "unloaded" and status["loads"] == 1
        with Conn(daemon_env.paths.socket) as warm:
            assert warm.request("warmup", model=None, keep_alive="pin")["ok"]
            status = model_status(watcher)
            assert status["state"] == "loaded" and status["pinned"]
            assert status["batches"] == 0  # no embedding call was made
        assert wait_until(lambda: not model_status(watcher)["pinned"])


def test_a_zero_keep_alive_unloads_before_the_answer_unless_another_client_holds_it(
    daemon_env: DaemonEnv,
) -> None:
    daemon_env.start_in_process()
    with Conn(daemon_env.paths.socket) as a, Conn(daemon_env.paths.socket) as b:
        a.request_raw("embed", texts=["zero"], keep_alive=0)
        assert model_status(a)["state"] == "unloaded"
        b.request_raw("embed", texts=["thirty"], keep_alive=30)
        a.request_raw("embed", texts=["zero again"], keep_alive=0)
        assert model_status(a)["state"] == "loaded"  # b's lease holds it


def test_release_unloads_only_when_no_other_client_holds_a_lease(daemon_env: DaemonEnv) -> None:
    daemon_env.start_in_process()
    with Conn(daemon_env.paths.socket) as a, Conn(daemon_env.paths.socket) as b:
        a.request_raw("embed", texts=["a"], keep_alive="pin")
        b.request_raw("embed", texts=["b"], keep_alive="10m")
        answer = a.request("release", model=None)
        assert answer["released"] and answer["unloaded"] == []
        status = model_status(a)
        assert status["state"] == "loaded" and not status["pinned"]
        answer = b.request("release", model=None)
        assert answer["unloaded"] == [status["model"]]
        assert model_status(a)["state"] == "unloaded"


def test_a_client_killed_mid_call_loses_its_queued_work_and_its_leases(
    daemon_env: DaemonEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = daemon_env.start_in_process()
    gate = Gate(daemon, monkeypatch)

    def hold() -> None:
        with Conn(daemon_env.paths.socket) as conn:
            conn.request_raw("embed", texts=["first"])

    holder = threading.Thread(target=hold)
    holder.start()
    assert gate.entered.wait(60)
    code = (
        "import sys; sys.path[:0] = sys.argv[2:4]\n"
        "from daemon_helpers import Conn\n"
        "c = Conn(sys.argv[1]); print('ready', flush=True)\n"
        "c.request_raw('embed', texts=['killed before its answer'], keep_alive='pin')\n"
    )
    from daemon_helpers import SRC, TESTS

    child = subprocess.Popen(
        [sys.executable, "-c", code, str(daemon_env.paths.socket), SRC, TESTS],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with Conn(daemon_env.paths.socket) as watcher:
            assert wait_until(lambda: model_status(watcher)["queued"] == 1)
            child.send_signal(signal.SIGKILL)
            child.wait(60)
            # The daemon saw it go (the holder and the watcher remain).
            assert wait_until(lambda: watcher.request("status")["clients"] == 2)
            gate.open.set()
            holder.join(120)
            status = model_status(watcher)
            assert status["dropped"] == 1 and status["texts"] == 1  # never reached the model
            assert not status["pinned"] and status["leases"] == []
            assert gate.calls == [1]
    finally:
        gate.open.set()
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_client_killed_while_its_call_runs_leaves_no_lease_behind(
    daemon_env: DaemonEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon_helpers import SRC, TESTS

    daemon = daemon_env.start_in_process()
    gate = Gate(daemon, monkeypatch)
    code = (
        "import sys; sys.path[:0] = sys.argv[2:4]\n"
        "from daemon_helpers import Conn\n"
        "c = Conn(sys.argv[1])\n"
        "c.request_raw('embed', texts=['killed while running'], keep_alive='pin')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(daemon_env.paths.socket), SRC, TESTS])
    try:
        assert gate.entered.wait(120)  # its call is in the model now
        child.send_signal(signal.SIGKILL)
        child.wait(60)
        with Conn(daemon_env.paths.socket) as watcher:
            assert wait_until(lambda: watcher.request("status")["clients"] == 1)
            gate.open.set()
            assert wait_until(lambda: model_status(watcher)["batches"] == 1)
            status = model_status(watcher)
            assert not status["pinned"] and status["leases"] == []
    finally:
        gate.open.set()
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_pin_ended_by_a_budget_eviction_does_not_come_back(
    daemon_env: DaemonEnv, model_dir: Path, tmp_path: Path
) -> None:
    from helpers import model_copy
    from lazyembed.config import load_settings

    other = str(model_copy(model_dir, tmp_path / "other-model"))
    daemon_env.start_in_process(settings=load_settings(max_loaded_models=1))
    with Conn(daemon_env.paths.socket) as a, Conn(daemon_env.paths.socket) as b:
        a.request_raw("embed", texts=["pinned"], keep_alive="pin")
        b.request_raw("embed", model=other, texts=["needs the room"])  # evicts the pinned one
        b.request_raw("embed", texts=["back"], keep_alive=600)  # reloads it, leases reset
        first = next(m for m in a.request("status")["models"] if m["model"] != other)
        assert first["state"] == "loaded" and not first["pinned"]  # as in-process


# ---- binding, permissions, peers -----------------------------------------------------------


def test_owner_only_permissions_whatever_the_umask_and_the_parent(daemon_env: DaemonEnv) -> None:
    run = Path(daemon_env.env["XDG_RUNTIME_DIR"])
    os.chmod(run, 0o777)
    old = os.umask(0)
    try:
        daemon_env.start_in_process()
    finally:
        os.umask(old)
    folder = daemon_env.paths.runtime_dir
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    st = os.lstat(daemon_env.paths.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()


def test_a_peer_of_another_uid_is_refused(daemon_env: DaemonEnv) -> None:
    daemon_env.start_in_process(allowed_uid=os.getuid() + 1)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(str(daemon_env.paths.socket))
    with sock:
        meta, _ = protocol.recv_frame(sock)
        assert error_type(meta) == "PeerRefusedError"
        assert sock.recv(1) == b""  # then closed


# The client runs as "nobody": it needs an interpreter anyone may run (a venv under
# /root is not), and only the standard library.
SYSTEM_PYTHON = next(
    (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)), None
)


@pytest.mark.skipif(os.getuid() != 0, reason="running a client as another user needs root")
@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="no system python3 for the other user")
def test_a_real_process_of_another_user_is_refused(daemon_env: DaemonEnv) -> None:
    assert SYSTEM_PYTHON is not None
    daemon_env.start_in_process()
    # Open the way for the test only: the folders and the socket are owner-only.
    for path in (daemon_env.root, daemon_env.root / "run", daemon_env.paths.runtime_dir):
        os.chmod(path, 0o755)
    os.chmod(daemon_env.paths.socket, 0o777)
    code = (
        "import json, os, socket, struct, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.settimeout(60); s.connect(sys.argv[1])\n"
        "head = s.recv(8, socket.MSG_WAITALL); n, p = struct.unpack('!II', head)\n"
        "meta = json.loads(s.recv(n, socket.MSG_WAITALL))\n"
        "print(os.getuid(), meta['error']['type'], s.recv(1) == b'')\n"
    )
    out = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", code, str(daemon_env.paths.socket)],
        user=65534,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert out.stdout.split() == ["65534", "PeerRefusedError", "True"], out.stderr


def test_a_stale_socket_is_replaced_and_a_live_one_never_touched(daemon_env: DaemonEnv) -> None:
    paths = daemon_env.paths
    paths.ensure()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0)
    try:
        stale.bind(str(paths.socket))  # left behind by a daemon that was SIGKILLed
    finally:
        os.umask(old)
    stale.close()
    assert stat.S_IMODE(os.lstat(paths.socket).st_mode) == 0o777  # (tells it apart)
    daemon_env.start_in_process()
    assert stat.S_IMODE(os.lstat(paths.socket).st_mode) == 0o600  # a new socket
    live_inode = os.lstat(paths.socket).st_ino
    second = Daemon(paths)
    with pytest.raises(DaemonRunningError):
        second.bind()
    assert os.lstat(paths.socket).st_ino == live_inode
    with Conn(paths.socket) as conn:
        assert conn.request("status")["ok"]


def test_a_stopping_daemon_never_unlinks_a_socket_that_is_no_longer_its_own(
    daemon_env: DaemonEnv,
) -> None:
    first = daemon_env.start_in_process()
    os.unlink(daemon_env.paths.socket)  # someone removed it; a second daemon took the path
    daemon_env.start_in_process()
    second_inode = os.lstat(daemon_env.paths.socket).st_ino
    first.request_stop()
    daemon_env.threads[0][1].join(60)
    assert os.lstat(daemon_env.paths.socket).st_ino == second_inode
    with Conn(daemon_env.paths.socket) as conn:
        assert conn.request("status")["ok"]


def test_malformed_and_oversized_frames_get_an_error_and_the_daemon_stays_up(
    daemon_env: DaemonEnv,
) -> None:
    daemon_env.start_in_process()
    path = str(daemon_env.paths.socket)
    for raw in (
        HEADER.pack(protocol.MAX_META + 1, 0),
        HEADER.pack(10, protocol.MAX_PAYLOAD + 1),
        HEADER.pack(8, 0) + b"not json",
        HEADER.pack(2, 0) + b"[]",
        struct.pack("!II", 100, 0) + b"{",  # then the client hangs up mid-frame
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(60)
            sock.connect(path)
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            meta, _ = protocol.recv_frame(sock)
            assert error_type(meta) == "ProtocolError"
            assert sock.recv(1) == b""
    with Conn(path) as conn:
        assert vectors(*conn.request_raw("embed", texts=["alive"])).shape == (1, 384)


def test_the_stop_op_answers_then_removes_the_socket(daemon_env: DaemonEnv) -> None:
    daemon_env.start_in_process()
    _, thread = daemon_env.threads[0]
    with Conn(daemon_env.paths.socket) as conn:
        assert conn.request("stop")["ok"]
    thread.join(60)
    assert not thread.is_alive()
    assert not daemon_env.paths.socket.exists() and not daemon_env.paths.pid.exists()


def test_daemon_help_and_the_idle_exit_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lazyembed import cli
    from lazyembed.config import KeepAlive, load_settings
    from lazyembed.daemon.server import idle_exit_setting

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["daemon", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: lazyembed daemon" in out and "{start,stop,status,run}" in out
    assert idle_exit_setting(load_settings()) == KeepAlive.after(300)
    monkeypatch.setenv("LAZYEMBED_DAEMON_IDLE_EXIT", "90s")
    assert idle_exit_setting(load_settings()) == KeepAlive.after(90)
    monkeypatch.setenv("LAZYEMBED_DAEMON_IDLE_EXIT", "never")
    assert idle_exit_setting(load_settings()).is_forever
