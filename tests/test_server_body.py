"""Request bodies on a live server (127.0.0.1, raw sockets): a stalled or trickling
upload is answered 408 within ``body_timeout`` and closed; a client that hangs up
mid-body is dropped at once (no CLOSE-WAIT socket left); a graceful shutdown closes an
unfinished upload at once, without tracebacks. No timed assertions: tiny timeouts and
generous bounds."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from helpers import wait_until
from lazyembed import Embedder
from lazyembed.config import load_settings
from lazyembed.server import HalfCloseProtocol, create_app
from server_helpers import LiveServer, Records, connected, free_port, metric, split_response

PARTIAL = (
    b"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b'Content-Length: 1000\r\n\r\n{"input": "only part of'
)


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    embedder = Embedder(cache_memory_mb=0, idle_timeout="1h")
    yield embedder
    embedder.close()


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    yield handler
    handler.detach()


def partial_upload(url: str, path: str) -> socket.socket:
    """A connection that sent the headers and part of a 1000-byte body, then stalls."""
    sock = connected(url)
    sock.sendall(PARTIAL.replace(b"{path}", path.encode()))
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def open_requests(server: LiveServer) -> int:
    """Connections of the server that hold a request (cycle) not yet answered."""
    connections: set[Any] = server.server.server_state.connections
    return sum(1 for c in connections if c.cycle is not None and not c.cycle.response_complete)


@pytest.mark.parametrize("path", ["/api/embed", "/v1/embeddings", "/api/embeddings", "/api/unload"])
def test_a_stalled_upload_is_answered_408_and_closed(
    path: str, embedder: Embedder, records: Records
) -> None:
    app = create_app(embedder, body_timeout=0.3)
    with LiveServer(app, http=HalfCloseProtocol) as server:
        records.attach()
        with partial_upload(server.url, path) as sock:
            raw = read_to_eof(sock)  # the server answers, then closes (60 s socket bound)
        status, body = split_response(raw)
        assert status == 408, raw
        error = json.loads(body)["error"]
        message = error["message"] if path.startswith("/v1/") else error
        assert "server_body_timeout" in message
        # The server is fine: a whole body in time is answered.
        assert (
            httpx.post(f"{server.url}/api/embed", json={"input": "x"}, timeout=120).status_code
            == 200
        )
    assert records.errors() == []


def test_a_trickling_upload_is_answered_408(embedder: Embedder, records: Records) -> None:
    """A client that keeps sending a byte now and then cannot hold the connection: it
    gets a 408, or (if its bytes race the close) a reset; before, it was kept forever."""
    app = create_app(embedder, body_timeout=0.5)
    with LiveServer(app, http=HalfCloseProtocol) as server:
        records.attach()
        with partial_upload(server.url, "/api/embed") as sock:
            stop = threading.Event()

            def trickle() -> None:
                while not stop.wait(0.05):
                    try:
                        sock.send(b" ")
                    except OSError:
                        return

            sender = threading.Thread(target=trickle)
            sender.start()
            raw = b""
            try:
                raw = read_to_eof(sock)
            except ConnectionResetError:
                # The server closed with the client still sending: the kernel answers the
                # next bytes with a reset, which may overtake the 408. Closed either way.
                pass
            finally:
                stop.set()
                sender.join(60)
        assert raw == b"" or split_response(raw)[0] == 408, raw
    assert records.errors() == []


@pytest.mark.parametrize("protocol", [HalfCloseProtocol, "auto"])
def test_clients_that_hang_up_mid_body_are_dropped_at_once(
    protocol: Any, embedder: Embedder, records: Records
) -> None:
    """Uploads cut short: the server closes its side at once (before, the half-close
    protocol kept them open, in CLOSE-WAIT, until the graceful timeout) and counts them
    as 499 (uvicorn's own protocol: they were answered 400 to nobody), FastAPI's routes
    (/api/unload) too."""
    app = create_app(embedder, body_timeout=3600)  # not the timeout's doing
    paths = ["/api/embed"] * 4 + ["/api/unload"]
    with LiveServer(app, http=protocol) as server:
        records.attach()
        sockets = [partial_upload(server.url, path) for path in paths]
        assert wait_until(lambda: open_requests(server) == len(paths))
        for sock in sockets:
            sock.close()
        assert wait_until(lambda: not server.server.server_state.connections)

        def dropped() -> list[float]:
            text = httpx.get(f"{server.url}/metrics", timeout=60).text
            return [
                metric(text, "lazyembed_requests_total", endpoint=path, status="499")
                for path in ("/api/embed", "/api/unload")
            ]

        assert wait_until(lambda: dropped() == [4, 1]), dropped()
    assert records.errors() == []


def test_shutdown_closes_an_unfinished_upload_at_once(embedder: Embedder, records: Records) -> None:
    """uvicorn waits for connections without a bound here (no graceful timeout), so the
    shutdown ends only because the unfinished upload is closed."""
    app = create_app(embedder, body_timeout=3600)
    server = LiveServer(app, http=HalfCloseProtocol)
    try:
        with server:
            records.attach()
            sock = partial_upload(server.url, "/api/embed")
            assert wait_until(lambda: open_requests(server) == 1)
            server.server.should_exit = True
            server.thread.join(120)
            assert not server.thread.is_alive(), "the shutdown waits for the stalled upload"
            assert read_to_eof(sock) == b""  # closed, unanswered
            sock.close()
    finally:
        server.server.should_exit = True
    assert records.errors() == []


def test_body_timeout_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().server.body_timeout == 10.0
    monkeypatch.setenv("LAZYEMBED_SERVER_BODY_TIMEOUT", "2.5s")
    assert load_settings().server.body_timeout == 2.5
    with pytest.raises(Exception, match="server_body_timeout"):
        load_settings(server_body_timeout=0)


def test_lazyembed_serve_stops_at_once_with_uploads_cut_short_or_stalled() -> None:
    """The command, for real: five uploads cut short and one stalled, then SIGTERM. The
    grace period and the body timeout are ten minutes, so the process exits within the
    bound below only if those connections were closed at once; no tracebacks."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = ["serve", "--port", str(port), "--graceful-timeout", "10m", "--body-timeout", "10m"]
    process = subprocess.Popen(
        [sys.executable, "-m", "lazyembed", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        cut_short = [partial_upload(url, "/api/embed") for _ in range(5)]
        stalled = partial_upload(url, "/v1/embeddings")
        for sock in cut_short:
            sock.close()

        def dropped() -> float:
            text = httpx.get(f"{url}/metrics", timeout=60).text
            return metric(text, "lazyembed_requests_total", endpoint="/api/embed", status="499")

        assert wait_until(lambda: dropped() == 5), dropped()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)  # far below the ten minutes
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr and "Exception in ASGI" not in stderr, stderr
        assert read_to_eof(stalled) == b""
        stalled.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
