"""The daemon's wire format: length-prefixed frames over a blocking Unix stream socket.

A frame is an 8-byte header ``struct.pack("!II", len(meta), len(payload))``, then the
meta (a UTF-8 JSON object), then the payload (raw bytes, often empty). Vectors travel in
the payload as little-endian float32, never as JSON numbers. PROTOCOL.md is the contract;
this module is its only encoder and decoder, and imports nothing heavy (no numpy).
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from lazyembed import errors
from lazyembed._version import __version__
from lazyembed.errors import LazyEmbedError

PROTOCOL_VERSION = 1
HEADER = struct.Struct("!II")
MAX_META = 64 * 2**20  # bytes of JSON meta a frame may carry
MAX_PAYLOAD = 2**30  # bytes of payload a frame may carry
_LITTLE = sys.byteorder == "little"

Meta = dict[str, Any]


def hello_meta(settings: dict[str, Any]) -> Meta:
    """The first request on every connection: this process's protocol, version and pid,
    and the daemon-level settings it has (compared by the daemon's answer)."""
    return {
        "op": "hello",
        "id": 0,
        "protocol": PROTOCOL_VERSION,
        "version": __version__,
        "pid": os.getpid(),
        "settings": settings,
    }


class ProtocolError(LazyEmbedError, ValueError):
    """A frame broke the wire format (oversized, not JSON, not an object, cut short)."""


class VersionMismatchError(LazyEmbedError, RuntimeError):
    """The daemon runs another lazyembed or protocol version (wire name "VersionMismatch")."""


class PeerRefusedError(LazyEmbedError, PermissionError):
    """The daemon refused the connection: the peer runs as another user."""


class ConnectionClosed(LazyEmbedError, ConnectionError):
    """The peer closed the connection cleanly between two frames."""


def send_frame(sock: socket.socket, meta: Meta, payload: bytes | memoryview = b"") -> None:
    """Send one frame; small frames go out in a single ``sendall`` (one syscall)."""
    body = json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode()
    header = HEADER.pack(len(body), len(payload))
    if len(payload) <= 65536:
        sock.sendall(b"".join((header, body, payload)))
    else:  # no copy of a large payload
        sock.sendall(header + body)
        sock.sendall(payload)


def recv_frame(
    sock: socket.socket, max_meta: int = MAX_META, max_payload: int = MAX_PAYLOAD
) -> tuple[Meta, bytes]:
    """Receive one frame: (meta, payload).

    Raises `ConnectionClosed` on a clean end of stream before a frame, `ProtocolError`
    on anything malformed (the caller answers with an error and closes: the rest of the
    stream can no longer be trusted), ``OSError`` on socket errors and timeouts.
    """
    header = _recv_exact(sock, HEADER.size, at_start=True)
    meta_len, payload_len = HEADER.unpack(header)
    if meta_len > max_meta:
        raise ProtocolError(f"frame meta of {meta_len} bytes exceeds the limit of {max_meta}")
    if payload_len > max_payload:
        raise ProtocolError(
            f"frame payload of {payload_len} bytes exceeds the limit of {max_payload}"
        )
    data = _recv_exact(sock, meta_len + payload_len)
    try:
        meta = json.loads(data[:meta_len].decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame meta is not UTF-8 JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ProtocolError(f"frame meta must be a JSON object, not {type(meta).__name__}")
    return meta, bytes(data[meta_len:]) if payload_len else b""


def _recv_exact(sock: socket.socket, n: int, *, at_start: bool = False) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            if at_start and got == 0:
                raise ConnectionClosed("the peer closed the connection")
            raise ProtocolError(f"connection closed in the middle of a frame ({got}/{n} bytes)")
        got += k
    return buf


# ---- answers and errors ----------------------------------------------------------------


def error_meta(request_id: object, exc: BaseException) -> Meta:
    """The error answer for ``exc``: its class name (looked up again by the client)."""
    name = type(exc).__name__
    if isinstance(exc, VersionMismatchError):
        name = "VersionMismatch"
    elif not isinstance(exc, LazyEmbedError):
        name = "LazyEmbedError"  # a bug or an OSError: the client sees the base class
    message = str(exc) or type(exc).__name__
    return {"ok": False, "id": request_id, "error": {"type": name, "message": message}}


_EXTRA: dict[str, type[LazyEmbedError]] = {
    "ProtocolError": ProtocolError,
    "VersionMismatch": VersionMismatchError,
    "VersionMismatchError": VersionMismatchError,
    "PeerRefusedError": PeerRefusedError,
}


def error_class(name: object) -> type[LazyEmbedError]:
    """The class of lazyembed.errors (or of this module) named ``name``; else the base."""
    if isinstance(name, str):
        if name in _EXTRA:
            return _EXTRA[name]
        found = getattr(errors, name, None)
        if isinstance(found, type) and issubclass(found, LazyEmbedError):
            return found
    return LazyEmbedError


def exception_from(meta: Meta) -> LazyEmbedError:
    """The typed exception an error answer describes (for the client to raise)."""
    error = meta.get("error")
    if not isinstance(error, dict):
        return ProtocolError(f"malformed error answer: {meta!r:.200}")
    message = str(error.get("message", ""))
    return error_class(error.get("type"))(message)


# ---- settings ---------------------------------------------------------------------------

#: The per-request settings that change vectors: part of an `embed` request's "options";
#: requests with different options never share a model (or cached vectors) in the daemon.
REQUEST_OPTIONS = (
    "variant",
    "backend",
    "precision",
    "prepack_weights",
    "encode_batch_size",
    "intra_op_threads",
    "allow_download",
    "model_cache_dir",
    "onnx_file",
)


# ---- float32 payloads without numpy -----------------------------------------------------


def pack_float32(rows: Iterable[Sequence[float]]) -> bytes:
    """Rows of floats as little-endian float32 bytes (C order); for tests and small use."""
    values = array.array("f")
    for row in rows:
        values.extend(row)
    if not _LITTLE:
        values.byteswap()
    return values.tobytes()


def unpack_float32(payload: bytes, shape: Sequence[int]) -> list[list[float]]:
    """A payload of ``shape`` (n, dim) as a list of n lists of floats."""
    n, dim = int(shape[0]), int(shape[1])
    if n < 0 or dim < 0 or len(payload) != 4 * n * dim:
        raise ProtocolError(f"payload of {len(payload)} bytes does not hold shape {list(shape)}")
    values = array.array("f")
    values.frombytes(payload)
    if not _LITTLE:
        values.byteswap()
    flat = values.tolist()
    return [flat[i * dim : (i + 1) * dim] for i in range(n)]
