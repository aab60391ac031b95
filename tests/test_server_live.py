"""A live uvicorn server on 127.0.0.1: half-closed connections, clients that hang up in
the middle of a long request, keep-alive edge values, and ``keep_alive: 0`` seen by
``/api/ps``. Real model throughout (a gate holds the first model call where the test
needs the model busy)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import ollama
import pytest

from helpers import wait_until
from lazyembed import Embedder
from lazyembed.config import KeepAlive
from lazyembed.server import HalfCloseProtocol, begin_shutdown, create_app
from server_helpers import (
    SERVED,
    TEXTS,
    LiveServer,
    Records,
    connected,
    half_closed_request,
    metric,
    request_bytes,
    split_response,
)


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    embedder = Embedder(cache_memory_mb=0, idle_timeout="1h")
    yield embedder
    embedder.close()


@pytest.fixture
def records() -> Iterator[Records]:
    """Log records of uvicorn and lazyembed (``records.attach()`` once the server is built)."""
    handler = Records()
    yield handler
    handler.detach()


HALF_CLOSED = [
    ("POST", "/api/embed", {"input": TEXTS[0]}, "embeddings"),
    ("POST", "/v1/embeddings", {"input": TEXTS[0]}, "data"),
    ("POST", "/api/embeddings", {"prompt": TEXTS[0]}, "embedding"),
    ("GET", "/api/ps", None, "models"),
    ("GET", "/api/tags", None, "models"),
    ("POST", "/api/unload", {}, "unloaded"),
]


def test_half_closed_requests_are_answered(
    embedder: Embedder, shared_embedder: Any, records: Records
) -> None:
    reference = shared_embedder.embed_numpy([TEXTS[0]])[0]
    with LiveServer(create_app(embedder), http=HalfCloseProtocol) as server:
        records.attach()
        for method, path, payload, key in HALF_CLOSED:
            body = b"" if payload is None else json.dumps(payload).encode()
            raw = half_closed_request(server.url, method, path, body)
            assert raw, f"{path}: no answer to a half-closed request"
            status, answer = split_response(raw)
            assert status == 200, (path, answer[:200])
            data = json.loads(answer)
            assert key in data
            if path == "/api/embed":
                assert np.allclose(data["embeddings"][0], reference, atol=1e-6)
        metrics = half_closed_request(server.url, "GET", "/metrics")
        assert split_response(metrics)[0] == 200
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert records.errors() == []


def test_half_closed_requests_on_plain_uvicorn_end_cleanly(
    embedder: Embedder, records: Records
) -> None:
    """uvicorn's own protocol closes at the EOF: no answer is possible, but no traceback."""
    with LiveServer(create_app(embedder)) as server:
        records.attach()
        for method, path, payload, _ in HALF_CLOSED:
            body = b"" if payload is None else json.dumps(payload).encode()
            half_closed_request(server.url, method, path, body)  # returns: the server closed
        assert httpx.post(f"{server.url}/api/embed", json={"input": "x"}).status_code == 200
    assert records.errors() == []


class GatedEmbedder:
    """The real embedder; the first model call waits for a gate; records every call."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed_numpy(self, texts: list[str], *, keep_alive: KeepAlive) -> np.ndarray:
        self.calls.append(list(texts))
        self.entered.set()
        self.gate.wait(60)
        result: np.ndarray = self.inner.embed_numpy(texts, keep_alive=keep_alive)
        return result


def _client_gone(server: LiveServer) -> bool:
    """uvicorn saw the hang-up: the connection is closed, or (ours) half-closed."""
    connections = server.server.server_state.connections
    return all(getattr(c, "half_closed", False) for c in connections)


@pytest.mark.parametrize("protocol", ["uvicorn", "half-close"])
def test_a_client_that_hangs_up_stops_its_long_request_at_the_next_chunk(
    embedder: Embedder, protocol: str, records: Records
) -> None:
    gated = GatedEmbedder(embedder)
    app = create_app(gated, batch_max_inputs=8, batch_wait_ms=0)
    options: dict[str, Any] = {"http": HalfCloseProtocol} if protocol == "half-close" else {}
    texts = [f"sentence {i} of a long request" for i in range(64)]  # eight chunks
    with LiveServer(app, **options) as server:
        records.attach()
        body = json.dumps({"input": texts}).encode()
        with connected(server.url) as sock:
            sock.sendall(request_bytes("POST", "/api/embed", body))
            assert gated.entered.wait(60)  # the first chunk is in the model...
        # ...when the client hangs up (closes its socket; nothing was answered yet).
        assert wait_until(lambda: _client_gone(server))
        gated.gate.set()
        short = httpx.post(f"{server.url}/api/embed", json={"input": "short"}, timeout=60)
        assert short.status_code == 200
        text = httpx.get(f"{server.url}/metrics").text
        assert metric(text, "lazyembed_requests_dropped_total") == 1.0
        assert wait_until(
            lambda: (
                metric(
                    httpx.get(f"{server.url}/metrics").text,
                    "lazyembed_requests_total",
                    endpoint="/api/embed",
                    status="499",
                )
                == 1.0
            )
        )
    assert gated.calls == [texts[:8], ["short"]]  # seven chunks never reached the model
    assert records.errors() == []


INFINITE = [b"1e309", b"1" + b"0" * 400, b"Infinity", b"-Infinity", b"NaN"]


@pytest.mark.parametrize("value", INFINITE)
def test_absurd_keep_alive_values_are_refused_never_a_pin(
    embedder: Embedder, value: bytes, records: Records
) -> None:
    with LiveServer(create_app(embedder)) as server:
        records.attach()
        embedder.unload_model()
        for path, body in [
            ("/api/embed", b'{"input": "x", "keep_alive": %s}' % value),
            ("/api/embed", b'{"keep_alive": %s}' % value),  # the load idiom
            ("/api/embeddings", b'{"prompt": "x", "keep_alive": %s}' % value),
            ("/v1/embeddings", b'{"input": "x", "keep_alive": %s}' % value),
        ]:
            response = httpx.post(
                f"{server.url}{path}", content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 422, (path, response.text)
            error = response.json()["error"]
            if path.startswith("/v1/"):
                assert error["code"] == "invalid_keep_alive"
            else:
                assert "keep_alive" in error
        ps = httpx.get(f"{server.url}/api/ps").json()
        assert ps["models"] == [] and ps["lazyembed"]["pinned"] is False
    assert records.errors() == []


def test_keep_alive_zero_is_unloaded_when_the_call_returns(
    embedder: Embedder, records: Records
) -> None:
    with LiveServer(create_app(embedder)) as server:
        records.attach()
        client = ollama.Client(host=server.url)
        for _ in range(3):
            result = client.embed(model="all-minilm", input=TEXTS[0], keep_alive=0)
            assert len(result.embeddings) == 1
            assert client.ps().models == []  # unloaded, never reported as still loaded
        client.embed(model="all-minilm", input=TEXTS[0], keep_alive="5m")
        assert [m.model for m in client.ps().models] == [SERVED]
    assert records.errors() == []


def test_shutdown_answers_unfinished_requests_before_the_grace_ends(
    embedder: Embedder, records: Records
) -> None:
    """Draining with the model busy: 503s, not cancelled handlers (and their tracebacks)."""
    gated = GatedEmbedder(embedder)
    app = create_app(gated, batch_max_inputs=8, batch_wait_ms=0, graceful_timeout=2)
    answers: dict[str, httpx.Response | Exception] = {}

    def post(name: str, texts: list[str]) -> None:
        try:
            answers[name] = httpx.post(f"{url}/api/embed", json={"input": texts}, timeout=60)
        except Exception as exc:
            answers[name] = exc

    live = LiveServer(app, timeout_graceful_shutdown=2, on_shutdown=lambda: begin_shutdown(app))
    url = live.url
    threads = [
        threading.Thread(target=post, args=("long", [f"text {i}" for i in range(64)])),
        threading.Thread(target=post, args=("short", ["short"])),
    ]
    try:
        with live:
            records.attach()
            threads[0].start()
            assert gated.entered.wait(60)  # the model is busy with the long request
            threads[1].start()
            assert wait_until(lambda: app.state.server.batcher.waiting == 2)
    finally:  # the server has stopped: let the abandoned model call end
        gated.gate.set()
        for thread in threads:
            thread.join(60)
    for name in ("long", "short"):
        answer = answers[name]
        assert isinstance(answer, httpx.Response), (name, answer)
        assert answer.status_code == 503 and "shutting down" in answer.json()["error"]
    assert app.state.abandoned_work is True
    assert records.errors() == []
