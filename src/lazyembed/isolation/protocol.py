"""The bytes that cross the pipe between the parent and an isolated worker.

Request: one byte (``E`` encode, ``Q`` quit) + the pickled list of texts; pickle is C
and beats any hand-split text frame, and the strings are copied either way.
Reply: a 16-byte header (status, n, dim, reserved: keeps the floats aligned), then
float32 vectors, then int32 token counts; the parent reads it with
``recv_bytes_into`` into a buffer made for the call and returns views of it. Shared
memory was not chosen: a batch's vectors are small next to its inference time, and it
would add a resource tracker, segment lifetimes and leaks on SIGKILL.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence

import numpy as np

from lazyembed.errors import WorkerError
from lazyembed.runtime import EncodeResult

OP_ENCODE = b"E"
OP_QUIT = b"Q"
HEADER = struct.Struct("<IIII")
STATUS_OK = 0x4F4B4F4B
STATUS_ERROR = 0x45525221
STATUS_READY = 0x52454459


def encode_request(texts: Sequence[str]) -> bytes:
    return OP_ENCODE + pickle.dumps(list(texts), protocol=pickle.HIGHEST_PROTOCOL)


def ready_frame(dimension: int) -> bytes:
    return HEADER.pack(STATUS_READY, 0, dimension, 0)


def error_frame(exc: BaseException) -> bytes:
    """The exception itself if it survives a pickle round trip, else a `WorkerError`."""
    try:
        payload = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(payload)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        payload = pickle.dumps(WorkerError(f"{type(exc).__name__}: {exc}"))
    return HEADER.pack(STATUS_ERROR, 0, 0, 0) + payload


def reply_frame(result: EncodeResult) -> bytearray:
    vectors = np.ascontiguousarray(result.vectors, dtype=np.float32)
    counts = np.asarray(result.token_counts, dtype=np.int32)
    n, dim = vectors.shape
    frame = bytearray(HEADER.size + vectors.nbytes + counts.nbytes)
    HEADER.pack_into(frame, 0, STATUS_OK, n, dim, 0)
    end = HEADER.size + vectors.nbytes
    frame[HEADER.size : end] = vectors.data.cast("B")
    frame[end:] = counts.data.cast("B")
    return frame


def reply_buffer(n: int, dim: int) -> np.ndarray:
    """An uninitialised buffer exactly the size of an OK reply for `n` texts."""
    return np.empty(HEADER.size + n * dim * 4 + n * 4, dtype=np.uint8)


def remote_error(frame: bytes | bytearray | memoryview) -> BaseException:
    """The exception an error frame carries (a `WorkerError` if it holds something else)."""
    exc = pickle.loads(bytes(frame[HEADER.size :]))
    if isinstance(exc, BaseException):
        return exc
    return WorkerError(f"isolated worker failed: {exc!r}")


def reply_problem(buffer: np.ndarray, received: int, n: int, dim: int) -> str | None:
    """None if `buffer` holds a well-formed reply (OK or error) to `n` texts, else why not."""
    status, rn, rdim, _ = HEADER.unpack_from(buffer.data)
    if status == STATUS_ERROR:
        return None
    if status != STATUS_OK or rn != n or rdim != dim or received != buffer.size:
        return f"isolated worker sent a malformed reply ({status:#x}, {rn}, {rdim})"
    return None


def parse_reply(buffer: np.ndarray, received: int, n: int, dim: int) -> EncodeResult:
    """Views of a well-formed reply as the call's result, or the worker's error raised."""
    if HEADER.unpack_from(buffer.data)[0] == STATUS_ERROR:
        raise remote_error(buffer[:received].tobytes())
    end = HEADER.size + n * dim * 4
    vectors = buffer[HEADER.size : end].view(np.float32).reshape(n, dim)
    counts = buffer[end:].view(np.int32).tolist()
    return EncodeResult(vectors, counts)
