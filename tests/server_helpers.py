"""Shared by the server tests: a fake embedder, a live uvicorn server, small probes.

The fake is for batching order and failure injection only; vectors, statuses and the
lifecycle are tested with the real model.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI

from lazyembed.config import KeepAlive, ServerSettings
from lazyembed.errors import InvalidInputError
from lazyembed.report import LifecycleStatus, MemoryReport, State
from lazyembed.server import Batcher

TEXTS = ["The cat sits on the mat.", "A quick brown fox.", "Embeddings map text to vectors."]
SERVED = "sentence-transformers/all-MiniLM-L6-v2"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus exposition text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    match = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class FakeEmbedder:
    """Deterministic vectors per text; records every model call; can block or fail."""

    model_name = SERVED

    def __init__(self, max_tokens: int = 256) -> None:
        self.settings = SimpleNamespace()
        self.max_tokens = max_tokens
        self.calls: list[tuple[list[str], KeepAlive]] = []
        self.warmups: list[KeepAlive] = []
        self.loaded = False
        self.loads = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail_with: BaseException | None = None
        self.report_error: BaseException | None = None  # raised by model_report()

    @property
    def is_loaded(self) -> bool:
        return self.loaded

    @staticmethod
    def vector(text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
        normalized: np.ndarray = vector / np.linalg.norm(vector)
        return normalized

    def embed_numpy(self, texts: list[str], *, keep_alive: KeepAlive) -> np.ndarray:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail_with is not None:
            raise self.fail_with
        if "bad" in texts:
            raise InvalidInputError("input 'bad' is bad")
        self.calls.append((list(texts), keep_alive))
        if not self.loaded:
            self.loaded, self.loads = True, self.loads + 1
        return np.stack([self.vector(t) for t in texts])

    def count_tokens(self, texts: list[str], *, truncate: bool = True) -> list[int]:
        cap = self.max_tokens if truncate else self.max_tokens + 1
        return [min(len(t.split()) + 2, cap) for t in texts]

    def warmup(self, *, keep_alive: KeepAlive) -> None:
        self.warmups.append(keep_alive)
        if not self.loaded:
            self.loaded, self.loads = True, self.loads + 1

    def unload_model(self) -> bool:
        was, self.loaded = self.loaded, False
        return was

    def memory_report(self, *, events: bool = True) -> MemoryReport:
        return fake_report(self.loaded, self.loads)

    def model_report(self) -> dict[str, Any]:
        if self.report_error is not None:
            raise self.report_error
        return {"variant": "fp32", "max_seq_length": self.max_tokens}

    def get_embedding_dimension(self) -> int:
        return 384

    def get_max_tokens(self) -> int:
        return self.max_tokens


def fake_report(loaded: bool, loads: int) -> MemoryReport:
    """A typed memory report with the figures a fake has (the rest zero)."""
    status = LifecycleStatus(
        state=State.LOADED if loaded else State.UNLOADED,
        model_mb=1.0 if loaded else 0.0,
        idle_seconds=None,
        idle_timeout=KeepAlive.FOREVER,
        unload_in_s=None,
        pinned=False,
        in_flight=0,
        waiting=0,
        unload_waiting=0,
        loads=loads,
        unloads=0,
        load_failures=0,
        loads_by_reason={"first_use": loads} if loads else {},
        unloads_by_reason={},
        last_load_ms=1.0,
        last_unload=None,
        watcher_wakeups=0,
        events=(),
    )
    return MemoryReport(SERVED, status, status.model_mb, 100.0, None, "none")


def make_batcher(embedder: Any, **knobs: Any) -> Batcher:
    """A batcher with the server's default knobs (from ServerSettings) unless given."""
    defaults = ServerSettings()
    options: dict[str, Any] = {
        "max_inputs": defaults.batch_max_inputs,
        "max_tokens": defaults.batch_max_tokens,
        "wait_ms": defaults.batch_wait_ms,
    }
    options.update(knobs)
    return Batcher(embedder, **options)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def wait_entered(fake: FakeEmbedder) -> None:
    assert await asyncio.to_thread(fake.entered.wait, 30)


class _Draining(uvicorn.Server):
    """uvicorn calling ``on_shutdown`` when its graceful shutdown starts (as the CLI does)."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.on_shutdown()
        await super().shutdown(sockets)


class LiveServer:
    """uvicorn in a background thread; ``url`` once it accepts connections."""

    def __init__(
        self, app: FastAPI, *, on_shutdown: Callable[[], None] | None = None, **options: Any
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", **options)
        self.server = _Draining(config, on_shutdown) if on_shutdown else uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()


class Records(logging.Handler):
    """Keeps the records of the loggers it is attached to.

    Attach after building a ``LiveServer``: uvicorn's logging set-up drops the handlers of
    its loggers.
    """

    LOGGERS = ("uvicorn.error", "lazyembed")

    def attach(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)

    def detach(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def errors(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def free_port() -> int:
    """A port nobody listens on now (for commands that bind it themselves)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def connected(url: str) -> socket.socket:
    """A raw TCP connection to a LiveServer's ``url``."""
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=60)


def request_bytes(method: str, path: str, body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def half_closed_request(url: str, method: str, path: str, body: bytes = b"") -> bytes:
    """Send one request on a raw socket, shut the write side (``nc -N``), read to EOF."""
    with connected(url) as sock:
        sock.sendall(request_bytes(method, path, body))
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def split_response(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


@contextmanager
def uvicorn_runs_recorded(
    monkeypatch: Any, record: Callable[[uvicorn.Config], None]
) -> Iterator[None]:
    """`lazyembed serve` up to uvicorn's run, which hands its config to ``record``
    instead of serving; the signal handlers the command installs are put back after."""

    def fake_run(self: uvicorn.Server, sockets: Any = None) -> None:
        record(self.config)
        self.started = True

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
