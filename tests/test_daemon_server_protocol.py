"""The daemon's frames (protocol.py) and private paths (paths.py): unit tests, no daemon."""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyembed.daemon import paths, protocol
from lazyembed.daemon.paths import RuntimeDirError, daemon_paths, ensure_private_dir
from lazyembed.daemon.protocol import (
    HEADER,
    ConnectionClosed,
    ProtocolError,
    VersionMismatchError,
    recv_frame,
    send_frame,
)
from lazyembed.errors import InvalidInputError, LazyEmbedError, PromptNotFoundError

# ---- frames ------------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def test_frame_round_trip_with_and_without_payload(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    send_frame(a, {"op": "hello", "id": 0, "text": "héllo ✓"})
    send_frame(a, {"op": "x", "id": 1}, b"\x00\x01\x02")
    assert recv_frame(b) == ({"op": "hello", "id": 0, "text": "héllo ✓"}, b"")
    assert recv_frame(b) == ({"op": "x", "id": 1}, b"\x00\x01\x02")


def test_large_payload_crosses_intact(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    big = os.urandom(3 * 2**20)
    import threading

    sender = threading.Thread(target=send_frame, args=(a, {"id": 7}, big))
    sender.start()
    meta, payload = recv_frame(b)
    sender.join()
    assert meta == {"id": 7} and payload == big


def test_clean_close_between_frames_is_connection_closed(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    a.close()
    with pytest.raises(ConnectionClosed):
        recv_frame(b)


@pytest.mark.parametrize(
    "raw, match",
    [
        (HEADER.pack(5, 0) + b"[1,2]", "JSON object"),
        (HEADER.pack(3, 0) + b"{x}", "not UTF-8 JSON"),
        (HEADER.pack(2, 0) + b"\xff\xfe", "not UTF-8 JSON"),
        (HEADER.pack(100, 0) + b"{}", "middle of a frame"),
        (b"\x00\x00\x00", "middle of a frame"),
    ],
)
def test_malformed_frames_raise_protocol_error(
    pair: tuple[socket.socket, ...], raw: bytes, match: str
) -> None:
    a, b = pair
    a.sendall(raw)
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match=match):
        recv_frame(b)


def test_oversized_frames_are_refused_before_reading(pair: tuple[socket.socket, ...]) -> None:
    a, b = pair
    a.sendall(struct.pack("!II", protocol.MAX_META + 1, 0))
    with pytest.raises(ProtocolError, match="meta"):
        recv_frame(b)
    a.sendall(struct.pack("!II", 2, 2**31))
    with pytest.raises(ProtocolError, match="payload"):
        recv_frame(b, max_payload=2**30)


def test_float32_payload_helpers_round_trip_without_numpy() -> None:
    rows = [[0.5, -1.25, 3.0], [1e-8, 2.0, -0.0]]
    data = protocol.pack_float32(rows)
    assert len(data) == 24
    assert data[:4] == struct.pack("<f", 0.5)  # little-endian on the wire
    back = protocol.unpack_float32(data, [2, 3])
    assert back == [[struct.unpack("<f", struct.pack("<f", v))[0] for v in row] for row in rows]
    with pytest.raises(ProtocolError):
        protocol.unpack_float32(data, [3, 3])


def test_error_answers_name_the_class_and_come_back_typed() -> None:
    meta = protocol.error_meta(4, PromptNotFoundError("no prompt 'x'"))
    assert meta == {
        "ok": False,
        "id": 4,
        "error": {"type": "PromptNotFoundError", "message": "no prompt 'x'"},
    }
    json.dumps(meta)
    exc = protocol.exception_from(meta)
    assert type(exc) is PromptNotFoundError and str(exc) == "no prompt 'x'"
    assert isinstance(exc, InvalidInputError)
    mismatch = protocol.error_meta(0, VersionMismatchError("daemon 9"))
    assert mismatch["error"]["type"] == "VersionMismatch"
    assert type(protocol.exception_from(mismatch)) is VersionMismatchError
    # A bug inside the daemon is not leaked as a builtin class, and unknown names map
    # to the base class.
    assert protocol.error_meta(1, KeyError("k"))["error"]["type"] == "LazyEmbedError"
    unknown = {"ok": False, "id": 1, "error": {"type": "os.system", "message": "m"}}
    assert type(protocol.exception_from(unknown)) is LazyEmbedError


# ---- paths -------------------------------------------------------------------------------


def test_paths_use_an_owned_xdg_runtime_dir(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}
    p = daemon_paths("1.2.3", env=env)
    assert p.runtime_dir == tmp_path / "lazyembed"
    assert p.socket == tmp_path / "lazyembed" / "daemon-1.2.3.sock"
    assert p.lock == tmp_path / "lazyembed" / "daemon-1.2.3.lock"
    assert p.log == tmp_path / "state" / "lazyembed" / "daemon.log"


def test_paths_fall_back_to_a_per_user_tmp_dir(tmp_path: Path) -> None:
    uid = os.getuid()
    for env in ({}, {"XDG_RUNTIME_DIR": str(tmp_path / "missing")}, {"XDG_RUNTIME_DIR": "rel"}):
        p = daemon_paths("1", env=env, tmp_root=tmp_path)
        assert p.runtime_dir == tmp_path / f"lazyembed-{uid}"
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    p = daemon_paths("1", env={"XDG_RUNTIME_DIR": str(link)}, tmp_root=tmp_path)
    assert p.runtime_dir == tmp_path / f"lazyembed-{uid}"
    home = {"HOME": str(tmp_path)}
    assert paths.log_path(home) == Path.home() / ".local/state/lazyembed/daemon.log"


def test_a_long_socket_path_falls_back_to_a_short_hashed_name(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    deep.mkdir(parents=True)
    p = daemon_paths("1", env={"XDG_RUNTIME_DIR": str(deep)}, tmp_root=tmp_path)
    assert p.runtime_dir == deep / "lazyembed"
    assert p.socket.parent == tmp_path / f"lazyembed-{os.getuid()}"
    assert p.socket.name.startswith("d-") and len(p.socket.name) == len("d-") + 16 + 5
    assert p.lock.parent == deep / "lazyembed"  # the lock has no length limit
    assert p.private_dirs == (deep / "lazyembed", p.socket.parent)
    p.ensure()
    for folder in p.private_dirs:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_private_dir_is_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o777)
    try:
        ensure_private_dir(tmp_path / "a")
    finally:
        os.umask(old)
    old = os.umask(0)
    try:
        ensure_private_dir(tmp_path / "b")
    finally:
        os.umask(old)
    for name in "ab":
        st = os.lstat(tmp_path / name)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    ensure_private_dir(tmp_path / "a")  # an existing good one is accepted


def test_unsafe_runtime_dirs_are_refused_and_left_untouched(tmp_path: Path) -> None:
    (tmp_path / "open").mkdir(mode=0o755)
    os.chmod(tmp_path / "open", 0o755)
    with pytest.raises(RuntimeDirError, match="mode 0755"):
        ensure_private_dir(tmp_path / "open")
    assert stat.S_IMODE(os.lstat(tmp_path / "open").st_mode) == 0o755
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(RuntimeDirError, match="symlink"):
        ensure_private_dir(tmp_path / "link")
    (tmp_path / "file").write_text("")
    with pytest.raises(RuntimeDirError, match="not a folder"):
        ensure_private_dir(tmp_path / "file")
    with pytest.raises(RuntimeDirError, match="cannot create"):
        ensure_private_dir(tmp_path / "missing" / "child")
    assert isinstance(RuntimeDirError("x"), LazyEmbedError)


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another uid needs root")
def test_a_folder_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(RuntimeDirError, match="owned by uid 65534"):
        ensure_private_dir(theirs)
    # An XDG_RUNTIME_DIR of someone else is not used at all.
    assert (
        daemon_paths("1", env={"XDG_RUNTIME_DIR": str(theirs)}, tmp_root=tmp_path).runtime_dir
        == tmp_path / "lazyembed-0"
    )


def test_paths_and_protocol_import_nothing_heavy() -> None:
    code = (
        "import sys, lazyembed.daemon.paths, lazyembed.daemon.protocol;"
        "print(sorted(m for m in ('numpy', 'onnxruntime', 'tokenizers', 'lazyembed.embedder',"
        " 'lazyembed.registry', 'lazyembed.config') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
