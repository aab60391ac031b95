"""Answers that used to mislead (in-process, real model): gzip bodies, lone surrogates,
``encoding_format: null``, OpenAI's model retrieval, ``input`` sent to /api/embeddings."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lazyembed import Embedder
from lazyembed.server import create_app
from server_helpers import SERVED, TEXTS


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    embedder = Embedder(cache_memory_mb=0, idle_timeout="never")
    yield embedder
    embedder.close()


@pytest.fixture(scope="module")
def client(embedder: Embedder) -> Iterator[TestClient]:
    with TestClient(create_app(embedder, max_body_bytes=4096)) as client:
        yield client


def post(client: TestClient, path: str, body: bytes, **headers: str) -> Any:
    return client.post(path, content=body, headers={"Content-Type": "application/json", **headers})


# ---- Content-Encoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),  # zlib-wrapped, as HTTP says
        ("deflate", lambda data: zlib.compress(data, wbits=-zlib.MAX_WBITS)),  # raw
    ],
)
def test_a_compressed_body_is_decoded(
    client: TestClient, coding: str, compress: Any, shared_embedder: Any
) -> None:
    body = compress(json.dumps({"input": TEXTS}).encode())
    response = post(client, "/api/embed", body, **{"Content-Encoding": coding})
    assert response.status_code == 200, response.text
    expected = shared_embedder.embed_numpy(TEXTS)
    np.testing.assert_allclose(np.array(response.json()["embeddings"]), expected, atol=1e-6)


def test_a_zip_bomb_is_refused_by_its_decoded_size(client: TestClient) -> None:
    """A small gzip body that expands past max_body_bytes: 413, never decoded whole."""
    bomb = gzip.compress(b'{"input": "' + b"a" * 3_000_000 + b'"}')
    assert len(bomb) < 4096
    response = post(client, "/v1/embeddings", bomb, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "once decoded" in response.json()["error"]["message"]


def test_broken_gzip_is_named(client: TestClient) -> None:
    broken = gzip.compress(b'{"input": "x"}')[:-12]  # cut short
    response = post(client, "/api/embed", broken, **{"Content-Encoding": "gzip"})
    assert response.status_code == 400 and "gzip" in response.json()["error"]
    response = post(client, "/api/embed", b"not gzip", **{"Content-Encoding": "gzip"})
    assert response.status_code == 400 and "not valid gzip" in response.json()["error"]


def test_an_encoding_not_decoded_is_415_naming_it(client: TestClient) -> None:
    response = post(client, "/v1/embeddings", b"\x00\x01", **{"Content-Encoding": "br"})
    assert response.status_code == 415
    error = response.json()["error"]
    assert "'br'" in error["message"] and error["code"] == "unsupported_encoding"


# ---- lone surrogates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/v1/embeddings", rb'{"input": "\ud800"}', "input 0"),
        ("/v1/embeddings", rb'{"input": ["fine", "x\udc00y"]}', "input 1"),
        ("/api/embed", rb'{"input": ["a", "b", "\ud800"]}', "input 2"),
        ("/api/embeddings", rb'{"prompt": "\ud800"}', "prompt"),
    ],
)
def test_a_lone_surrogate_is_named_with_its_input(
    client: TestClient, path: str, body: bytes, where: str
) -> None:
    response = post(client, path, body)
    assert response.status_code == 422
    error = response.json()["error"]
    message = error["message"] if path.startswith("/v1/") else error
    assert message.startswith(f"{where} is not valid Unicode text (lone surrogate"), message


def test_a_surrogate_pair_is_text(client: TestClient) -> None:
    response = post(client, "/v1/embeddings", rb'{"input": "\ud83d\ude00"}')
    assert response.status_code == 200


def test_malformed_json_is_still_400(client: TestClient) -> None:
    response = post(client, "/api/embed", b'{"input": ')
    assert response.status_code == 400 and "malformed JSON" in response.json()["error"]


# ---- OpenAI: encoding_format null, retrieve a model -------------------------------------------


def test_encoding_format_null_means_float(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"input": "x", "encoding_format": None})
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["data"][0]["embedding"], list)


@pytest.mark.parametrize("name", [SERVED, "all-MiniLM-L6-v2"])
def test_a_served_model_can_be_retrieved(client: TestClient, name: str) -> None:
    response = client.get(f"/v1/models/{name}")
    assert response.status_code == 200
    assert response.json() == {
        "id": SERVED,
        "object": "model",
        "created": 0,
        "owned_by": "lazyembed",
    }
    assert response.json() in client.get("/v1/models").json()["data"]


def test_an_unknown_model_is_404_in_openais_shape(client: TestClient) -> None:
    response = client.get("/v1/models/text-embedding-3-small")
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error"
    assert "'text-embedding-3-small'" in error["message"]


# ---- Ollama: input sent to /api/embeddings ------------------------------------------------


def test_input_instead_of_prompt_is_an_error_naming_prompt(client: TestClient) -> None:
    response = client.post("/api/embeddings", json={"input": "a"})
    assert response.status_code == 422
    assert "'prompt'" in response.json()["error"]
    # No prompt at all is still Ollama's "load the model" idiom.
    response = client.post("/api/embeddings", json={})
    assert response.status_code == 200 and response.json() == {"embedding": []}
