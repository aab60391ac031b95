"""Keep-alive leases through the server (issues 19 and 23): Ollama's ``keep_alive: 0``
after requests that gave none, and the keep-alive of a request answered from the
embedding cache. Real model, default idle timeout, cache on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lazyembed import Embedder
from lazyembed.server import create_app


@pytest.fixture
def client() -> Iterator[TestClient]:
    embedder = Embedder()  # the defaults: a 30-minute idle timeout, the memory cache
    try:
        with TestClient(create_app(embedder)) as client:
            yield client
    finally:
        embedder.close()


def ps(client: TestClient) -> dict[str, Any]:
    body: dict[str, Any] = client.get("/api/ps").json()
    return body


def embed(client: TestClient, **body: Any) -> None:
    assert client.post("/api/embed", json=body).status_code == 200


def test_keep_alive_zero_after_a_request_without_one_unloads(client: TestClient) -> None:
    embed(client, input="hi")
    assert ps(client)["lazyembed"]["unload_in_s"] > 1000  # the default lease
    embed(client, input="bye", keep_alive=0)
    assert ps(client)["models"] == []


def test_a_request_answered_from_the_cache_still_leaves_its_keep_alive(
    client: TestClient,
) -> None:
    embed(client, input="pin it", keep_alive="3s")
    embed(client, input="pin it", keep_alive=-1)  # the README's "pin it", now a hit
    body = ps(client)
    assert body["lazyembed"]["pinned"] is True and body["models"][0]["expires_at"] is None
    embed(client, input="pin it", keep_alive=0)  # another caller's 0 never cuts a pin
    assert ps(client)["lazyembed"]["model_loaded"] is True
    assert client.post("/api/unload").json()["unloaded"] is True
    embed(client, input="loaded again")
    embed(client, input="pin it", keep_alive=0)  # a hit: replaces the default lease
    body = ps(client)
    assert body["models"] == [] and body["lazyembed"]["loads"] == 2
