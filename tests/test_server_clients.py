"""The official ``openai`` and ``ollama`` clients, unchanged, against a live uvicorn server.

The server runs in a thread on 127.0.0.1 with a port the OS picked (``LiveServer``: a
pre-bound socket, so no race for the port). Vectors are compared with the library's own.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import ollama
import openai
import pytest

from lazyembed import Embedder
from lazyembed.config import KeepAlive
from lazyembed.server import create_app
from server_helpers import SERVED, TEXTS, LiveServer, Records


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    embedder = Embedder(cache_memory_mb=0, idle_timeout="never")
    yield embedder
    embedder.close()


@pytest.fixture(scope="module")
def live(embedder: Embedder) -> Iterator[LiveServer]:
    with LiveServer(create_app(embedder, batch_wait_ms=20)) as server:
        yield server


@pytest.fixture(scope="module")
def reference(shared_embedder: Any) -> np.ndarray:
    vectors: np.ndarray = shared_embedder.embed_numpy(TEXTS)
    return vectors


def test_openai_client_default_base64(live: LiveServer, reference: np.ndarray) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    result = client.embeddings.create(model="all-minilm", input=TEXTS)
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    assert np.allclose(got, reference, atol=1e-6)
    assert result.usage.prompt_tokens > len(TEXTS)


def test_openai_client_float_and_single_text(live: LiveServer, reference: np.ndarray) -> None:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    result = client.embeddings.create(model=SERVED, input=TEXTS[2], encoding_format="float")
    assert np.allclose(np.array(result.data[0].embedding), reference[2], atol=1e-6)
    with pytest.raises(openai.NotFoundError, match="all-MiniLM-L6-v2"):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model="all-minilm", input="x", dimensions=256)


def test_ollama_client(live: LiveServer, reference: np.ndarray) -> None:
    client = ollama.Client(host=live.url)
    result = client.embed(model="all-minilm", input=TEXTS)
    assert np.allclose(np.array(result.embeddings), reference, atol=1e-6)
    assert result.prompt_eval_count and result.prompt_eval_count > len(TEXTS)
    legacy = client.embeddings(model="all-minilm", prompt=TEXTS[0])
    assert np.allclose(np.array(legacy.embedding), reference[0], atol=1e-6)
    running = client.ps()
    assert [m.model for m in running.models] == [SERVED]
    assert running.models[0].size and running.models[0].size > 0
    assert [m.model for m in client.list().models] == [SERVED]
    with pytest.raises(ollama.ResponseError) as error:
        client.embed(model="nomic-embed-text", input="x")
    assert error.value.status_code == 404 and SERVED in error.value.error


def test_32_concurrent_clients_get_their_own_vectors_in_shared_batches(
    live: LiveServer, shared_embedder: Any
) -> None:
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'dogs'}" for i in range(32)]
    expected = shared_embedder.embed_numpy(texts)
    results: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(32)

    def one(i: int) -> None:
        with httpx.Client(base_url=live.url, timeout=60) as http:
            barrier.wait()
            body = http.post("/api/embed", json={"model": "all-minilm", "input": texts[i]}).json()
            results[i] = np.array(body["embeddings"][0], dtype=np.float32)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == list(range(32))
    for i in range(32):
        assert np.allclose(results[i], expected[i], atol=1e-6)
    text = httpx.get(f"{live.url}/metrics").text
    single = re.search(r'^lazyembed_batch_requests_bucket\{le="1\.0"\} (\S+)$', text, re.M)
    total = re.search(r"^lazyembed_batch_requests_count (\S+)$", text, re.M)
    assert single and total
    assert float(total.group(1)) > float(single.group(1))  # some call served > 1 request


def test_api_key_with_both_clients(embedder: Embedder, reference: np.ndarray) -> None:
    with LiveServer(create_app(embedder, api_key="k3y")) as server:
        good = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k3y", max_retries=0)
        assert len(good.embeddings.create(model="all-minilm", input="x").data) == 1
        bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.embeddings.create(model="all-minilm", input="x")
        client = ollama.Client(host=server.url, headers={"Authorization": "Bearer k3y"})
        result = client.embed(model="all-minilm", input=TEXTS[0])
        assert np.allclose(np.array(result.embeddings[0]), reference[0], atol=1e-6)
        with pytest.raises(ollama.ResponseError) as error:
            ollama.Client(host=server.url).embed(model="all-minilm", input="x")
        assert error.value.status_code == 401
        assert httpx.get(f"{server.url}/healthz").status_code == 200


class _GatedEmbedder:
    """Wraps the real embedder; the first model call waits for a gate (ordering test)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.seen: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed_numpy(self, texts: list[str], *, keep_alive: KeepAlive) -> np.ndarray:
        self.seen.extend(texts)
        self.entered.set()
        self.gate.wait(60)
        result: np.ndarray = self.inner.embed_numpy(texts, keep_alive=keep_alive)
        return result


def test_a_client_that_disconnects_while_queued_costs_nothing(embedder: Embedder) -> None:
    gated = _GatedEmbedder(embedder)
    app = create_app(gated, batch_wait_ms=0)
    records = Records()
    with LiveServer(app) as server:
        records.attach()  # after uvicorn configured its logging
        try:
            _abandon_a_queued_request(server, gated)
        finally:
            records.detach()
    # The abandoned request is no server error: nothing logged (uvicorn used to log
    # "Exception in ASGI application" with the CancelledError's traceback).
    assert records.errors() == []


def _abandon_a_queued_request(server: LiveServer, gated: _GatedEmbedder) -> None:
    holder: dict[str, Any] = {}

    def blocker() -> None:
        holder["r"] = httpx.post(f"{server.url}/api/embed", json={"input": "first"}, timeout=60)

    thread = threading.Thread(target=blocker)
    thread.start()
    assert gated.entered.wait(60)  # the model is busy with "first"
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/api/embed", json={"input": "abandoned"}, timeout=0.5)
    gated.gate.set()
    thread.join(60)
    assert holder["r"].status_code == 200
    after = httpx.post(f"{server.url}/api/embed", json={"input": "later"}, timeout=60)
    assert after.status_code == 200
    assert "abandoned" not in gated.seen
    text = httpx.get(f"{server.url}/metrics").text
    assert re.search(r"^lazyembed_requests_dropped_total 1\.0$", text, re.M)

    def requests(status: str) -> float:
        text = httpx.get(f"{server.url}/metrics").text
        labels = f'endpoint="/api/embed",status="{status}"'
        match = re.search(rf"^lazyembed_requests_total\{{{labels}\}} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    deadline = time.monotonic() + 60  # the dropped handler records its status as it ends
    while requests("499") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert requests("499") == 1.0  # nginx's "client closed request", not a 500
    assert requests("500") == 0.0
    assert requests("200") == 2.0
