"""The HTTP endpoints in-process (FastAPI TestClient).

Vectors, statuses and lifecycle use the real model. A fake embedder appears only where a
test injects model failures.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from helpers import wait_until
from lazyembed import Embedder
from lazyembed.config import ServerSettings
from lazyembed.errors import (
    ClosedError,
    ConfigError,
    InputTooLongError,
    InvalidInputError,
    ModelBusyError,
    ModelLoadError,
    WorkerDiedError,
)
from lazyembed.server import create_app
from server_helpers import SERVED, TEXTS, FakeEmbedder, metric

# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    embedder = Embedder(cache_memory_mb=0, idle_timeout="never")
    yield embedder
    embedder.close()


@pytest.fixture(scope="module")
def client(embedder: Embedder) -> Iterator[TestClient]:
    with TestClient(create_app(embedder)) as client:
        yield client


@pytest.fixture(scope="module")
def reference(shared_embedder: Any) -> np.ndarray:
    vectors: np.ndarray = shared_embedder.embed_numpy(TEXTS)
    return vectors


# ---- endpoints: vectors equal the library's -------------------------------------------------


def test_openai_float_vectors_equal_the_library(client: TestClient, reference: np.ndarray) -> None:
    response = client.post("/v1/embeddings", json={"input": TEXTS, "model": "all-minilm"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == SERVED
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert got.shape == (3, 384)
    assert np.allclose(got, reference, atol=1e-6)


def test_openai_base64_is_little_endian_float32(
    client: TestClient, reference: np.ndarray, shared_embedder: Any
) -> None:
    body = client.post(
        "/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"}
    ).json()
    got = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(got, reference[0], atol=1e-6)
    tokens = shared_embedder.count_tokens([TEXTS[0]])[0]
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_ollama_endpoints_equal_the_library(
    client: TestClient, reference: np.ndarray, shared_embedder: Any
) -> None:
    body = client.post("/api/embed", json={"model": "all-minilm", "input": TEXTS}).json()
    assert body["model"] == "all-minilm"
    assert np.allclose(np.array(body["embeddings"]), reference, atol=1e-6)
    assert body["prompt_eval_count"] == sum(shared_embedder.count_tokens(TEXTS))
    assert body["total_duration"] > 0 and body["load_duration"] >= 0
    legacy = client.post("/api/embeddings", json={"model": "all-minilm", "prompt": TEXTS[1]})
    assert np.allclose(np.array(legacy.json()["embedding"]), reference[1], atol=1e-6)


@pytest.mark.parametrize(
    "name", ["all-minilm", "all-MiniLM-L6-v2", "all-minilm:l6-v2", "all-minilm:latest", SERVED]
)
def test_model_aliases_are_accepted(client: TestClient, name: str) -> None:
    assert client.post("/v1/embeddings", json={"input": "x", "model": name}).status_code == 200


def test_unknown_model_is_404_naming_the_served_model(client: TestClient) -> None:
    openai = client.post("/v1/embeddings", json={"input": "x", "model": "text-embedding-3-small"})
    assert openai.status_code == 404
    assert openai.json()["error"]["code"] == "model_not_found"
    assert SERVED in openai.json()["error"]["message"]
    ollama = client.post("/api/embed", json={"input": "x", "model": "nomic-embed-text"})
    assert ollama.status_code == 404 and SERVED in ollama.json()["error"]


# ---- bad requests and limits ---------------------------------------------------------------

BAD_REQUESTS = [
    ("/v1/embeddings", b"{not json", 400),
    ("/api/embed", b'{"input": ', 400),
    ("/v1/embeddings", b"", 400),
    ("/v1/embeddings", b"[1, 2]", 422),
    ("/v1/embeddings", b'{"model": "all-minilm"}', 422),
    ("/v1/embeddings", b'{"input": 5}', 422),
    ("/v1/embeddings", b'{"input": [[1, 2, 3]]}', 422),
    ("/v1/embeddings", b'{"input": [101, 2023, 102]}', 422),
    ("/v1/embeddings", b'{"input": []}', 422),
    ("/v1/embeddings", b'{"input": "x", "dimensions": 512}', 422),
    ("/v1/embeddings", b'{"input": "x", "encoding_format": "int8"}', 422),
    ("/api/embed", b'{"input": "x", "truncate": "no"}', 422),
    ("/api/embed", b'{"input": "x", "keep_alive": "soon"}', 422),
    ("/api/embed", b'{"input": ["x", null]}', 422),
    ("/api/embeddings", b'{"prompt": ["x"]}', 422),
]


@pytest.mark.parametrize(("path", "body", "status"), BAD_REQUESTS)
def test_bad_requests_get_json_errors(
    client: TestClient, path: str, body: bytes, status: int
) -> None:
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    if path.startswith("/v1/"):
        assert error["message"] and error["type"] and error["code"]
    else:
        assert isinstance(error, str) and error
    assert client.get("/healthz").status_code == 200


def test_token_ids_get_a_clear_message(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"input": [101, 2023, 102]})
    assert "token ids" in response.json()["error"]["message"]


def test_dimensions_384_is_accepted(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"input": "x", "dimensions": 384})
    assert response.status_code == 200


def test_unknown_routes_answer_json_in_the_right_dialect(client: TestClient) -> None:
    assert client.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert client.get("/api/nothing").json() == {"error": "Not Found"}
    assert client.get("/v1/embeddings").status_code == 405


def test_limits_answer_413_and_the_server_stays_up(embedder: Embedder) -> None:
    app = create_app(embedder, max_inputs_per_request=3, max_chars_per_input=50, max_body_bytes=400)
    with TestClient(app) as client:
        many = client.post("/v1/embeddings", json={"input": ["a"] * 4})
        assert many.status_code == 413 and many.json()["error"]["code"] == "too_many_inputs"
        long = client.post("/api/embed", json={"input": "x" * 51})
        assert long.status_code == 413 and "50" in long.json()["error"]
        big = client.post("/v1/embeddings", json={"input": ["y" * 40] * 3, "user": "z" * 300})
        assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
            yield b'{"input": "'
            for _ in range(10):
                yield b"w" * 50
            yield b'"}'

        streamed = client.post("/api/embed", content=chunks())
        assert streamed.status_code == 413
        assert client.post("/v1/embeddings", json={"input": ["ok"] * 3}).status_code == 200


def test_truncate_false_refuses_too_long_input(client: TestClient) -> None:
    long_text = "word " * 400
    refused = client.post("/api/embed", json={"input": long_text, "truncate": False})
    assert refused.status_code == 400 and "truncate" in refused.json()["error"]
    kept = client.post("/api/embed", json={"input": long_text})
    assert kept.status_code == 200 and kept.json()["prompt_eval_count"] == 256
    short = client.post("/api/embed", json={"input": "short", "truncate": False})
    assert short.status_code == 200


def test_truncate_false_accepts_an_input_that_exactly_fits(
    client: TestClient, shared_embedder: Any
) -> None:
    fits = " ".join(["word"] * 254)  # [CLS] + 254 + [SEP] = the model's 256 tokens
    over = " ".join(["word"] * 255)
    assert shared_embedder.count_tokens([fits, over]) == [256, 256]  # (over is truncated)
    exact = client.post("/api/embed", json={"input": fits, "truncate": False})
    assert exact.status_code == 200 and exact.json()["prompt_eval_count"] == 256
    mixed = client.post("/api/embed", json={"input": ["short", over], "truncate": False})
    assert mixed.status_code == 400
    assert "input 1" in mixed.json()["error"] and "256" in mixed.json()["error"]


def test_an_unknown_model_name_is_echoed_short(client: TestClient) -> None:
    name = "m" * 1_000_000
    for path in ("/v1/embeddings", "/api/embed"):
        response = client.post(path, json={"input": "x", "model": name})
        assert response.status_code == 404
        error = response.json()["error"]
        message = error["message"] if path.startswith("/v1/") else error
        assert len(message) < 1000 and "m" * 100 + "'…" in message
        assert SERVED in message and "all-minilm" in message  # what is available


def test_liveness_probes_need_no_api_key(embedder: Embedder) -> None:
    with TestClient(create_app(embedder, api_key="s3cret")) as client:
        root = client.get("/")  # Ollama's probe
        assert root.status_code == 200 and root.text == "lazyembed is running"
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/version").status_code == 401


@pytest.mark.parametrize("key", ["secret ", " secret", "secret\n"])
def test_an_api_key_with_surrounding_whitespace_is_refused_at_start(
    embedder: Embedder, key: str
) -> None:
    with pytest.raises(ConfigError, match="whitespace"):
        create_app(embedder, api_key=key)
    with pytest.raises(ConfigError, match="whitespace"):
        create_app(embedder, config=ServerSettings(api_key=key))


def test_the_clients_token_is_compared_without_surrounding_whitespace(
    embedder: Embedder,
) -> None:
    with TestClient(create_app(embedder, api_key="s3cret")) as client:
        for header in ("Bearer s3cret", "Bearer  s3cret ", "bearer s3cret"):
            response = client.post(
                "/v1/embeddings", json={"input": "x"}, headers={"Authorization": header}
            )
            assert response.status_code == 200, header
        wrong = client.post(
            "/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer s3cre"}
        )
        assert wrong.status_code == 401


def test_api_key_is_required_except_for_healthz(embedder: Embedder) -> None:
    with TestClient(create_app(embedder, api_key="s3cret")) as client:
        missing = client.post("/v1/embeddings", json={"input": "x"})
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
        wrong = client.post(
            "/api/embed", json={"input": "x"}, headers={"Authorization": "Bearer no"}
        )
        assert wrong.status_code == 401 and isinstance(wrong.json()["error"], str)
        assert client.get("/metrics").status_code == 401
        assert client.get("/healthz").status_code == 200
        right = client.post(
            "/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer s3cret"}
        )
        assert right.status_code == 200


def test_model_errors_fail_the_request_not_the_server() -> None:
    fake = FakeEmbedder()
    with TestClient(create_app(fake)) as client:
        fake.fail_with = RuntimeError("kaboom")
        broken = client.post("/v1/embeddings", json={"input": "x"})
        assert broken.status_code == 500 and "kaboom" in broken.json()["error"]["message"]
        fake.fail_with = ModelLoadError("no memory")
        unavailable = client.post("/api/embed", json={"input": "x"})
        assert unavailable.status_code == 503 and "no memory" in unavailable.json()["error"]
        fake.fail_with = None
        assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 200


ANSWERS = [
    (InputTooLongError("input 0 is too long"), 400, "context_length_exceeded"),
    (InvalidInputError("bad input"), 422, "invalid_input"),
    (WorkerDiedError("the worker died"), 503, "model_unavailable"),
    (ClosedError("closed"), 503, "model_unavailable"),
    (ModelBusyError("no room"), 503, "model_unavailable"),
    (ValueError("odd"), 500, "internal_error"),
]


@pytest.mark.parametrize(("error", "status", "code"), ANSWERS)
def test_one_error_table_answers_every_path(error: Exception, status: int, code: str) -> None:
    fake = FakeEmbedder()
    with TestClient(create_app(fake)) as client:
        fake.fail_with = error
        openai = client.post("/v1/embeddings", json={"input": "x"})
        assert openai.status_code == status and openai.json()["error"]["code"] == code
        assert str(error) in openai.json()["error"]["message"]
        ollama = client.post("/api/embed", json={"input": "x"})
        assert ollama.status_code == status and str(error) in ollama.json()["error"]
        # A route FastAPI calls (not the guard's fast path) answers from the same table.
        fake.report_error = error
        tags = client.get("/api/tags")
        assert tags.status_code == status and str(error) in tags.json()["error"]


# ---- status endpoints and the lifecycle ----------------------------------------------------


def test_ps_tags_unload_and_metrics(client: TestClient) -> None:
    assert client.post("/v1/embeddings", json={"input": "load it"}).status_code == 200
    ps = client.get("/api/ps").json()
    assert ps["lazyembed"]["model_loaded"] is True
    (model,) = ps["models"]
    assert model["name"] == SERVED and model["size"] > 0 and model["size_vram"] == 0
    assert model["expires_at"] is None  # this embedder never unloads when idle
    tags = client.get("/api/tags").json()["models"]
    assert tags[0]["model"] == SERVED and tags[0]["size"] > 1_000_000
    assert len(tags[0]["digest"]) == 64
    text = client.get("/metrics").text
    assert metric(text, "lazyembed_model_loaded") == 1.0
    assert metric(text, "lazyembed_model_bytes") > 0
    assert metric(text, "lazyembed_process_rss_bytes") > 0
    assert metric(text, "lazyembed_inputs_total") >= 1
    assert 'lazyembed_request_duration_seconds_count{endpoint="/v1/embeddings"}' in text
    unloaded = client.post("/api/unload").json()
    assert unloaded["unloaded"] is True and unloaded["memory"]["model_loaded"] is False
    assert client.get("/api/ps").json()["models"] == []
    text = client.get("/metrics").text
    assert metric(text, "lazyembed_model_loaded") == 0.0
    assert metric(text, "lazyembed_model_unloads_total", reason="explicit") >= 1
    assert client.get("/healthz").json() == {"status": "ok", "model_loaded": False}


def test_keep_alive_zero_unloads_and_a_pin_survives_a_later_zero() -> None:
    embedder = Embedder(cache_memory_mb=0, idle_timeout="1h")
    try:
        with TestClient(create_app(embedder)) as client:
            zero = client.post("/api/embed", json={"input": "a", "keep_alive": 0})
            assert zero.status_code == 200 and zero.json()["load_duration"] > 0
            assert client.get("/api/ps").json()["models"] == []
            client.post("/api/embed", json={"input": "b", "keep_alive": -1})
            client.post("/v1/embeddings", json={"input": "c", "keep_alive": 0})
            ps = client.get("/api/ps").json()
            assert ps["lazyembed"]["model_loaded"] is True
            assert ps["models"][0]["expires_at"] is None  # pinned
    finally:
        embedder.close()


def test_ollama_empty_input_loads_and_keep_alive_zero_unloads() -> None:
    embedder = Embedder(cache_memory_mb=0, idle_timeout="1h")
    try:
        with TestClient(create_app(embedder)) as client:
            loaded = client.post("/api/embed", json={"model": "all-minilm", "keep_alive": "5m"})
            assert loaded.status_code == 200 and loaded.json()["embeddings"] == []
            ps = client.get("/api/ps").json()
            assert ps["lazyembed"]["model_loaded"] is True
            assert ps["models"][0]["expires_at"] is not None
            gone = client.post(
                "/api/embed", json={"model": "all-minilm", "input": [], "keep_alive": 0}
            )
            assert gone.status_code == 200
            assert client.get("/api/ps").json()["lazyembed"]["model_loaded"] is False
            legacy = client.post("/api/embeddings", json={"model": "all-minilm", "prompt": ""})
            assert legacy.json() == {"embedding": []}
            assert client.get("/api/ps").json()["lazyembed"]["model_loaded"] is True
    finally:
        embedder.close()


def test_ollama_load_idiom_loads_and_pins_although_the_cache_is_on() -> None:
    """The idiom must load (and leave its lease) even once "" would be a cache hit."""
    embedder = Embedder(cache_memory_mb=8, idle_timeout="1h")  # the default: cache on

    def loaded_and_expiry(client: TestClient) -> tuple[bool, Any]:
        ps = client.get("/api/ps").json()
        expires = ps["models"][0]["expires_at"] if ps["models"] else "unloaded"
        return ps["lazyembed"]["model_loaded"], expires

    try:
        with TestClient(create_app(embedder)) as client:
            first = client.post("/api/embed", json={"model": "all-minilm"})
            assert first.status_code == 200 and first.json()["load_duration"] > 0
            assert client.post("/api/embed", json={"input": [""]}).status_code == 200  # "" cached
            assert client.post("/api/unload").json()["unloaded"] is True
            pinned = client.post("/api/embed", json={"input": [], "keep_alive": -1})
            assert pinned.status_code == 200 and pinned.json()["load_duration"] > 0
            assert loaded_and_expiry(client) == (True, None)  # loaded and pinned

            assert client.post("/api/unload").json()["unloaded"] is True
            legacy = client.post("/api/embeddings", json={"prompt": "", "keep_alive": "5m"})
            assert legacy.json() == {"embedding": []}
            loaded, expires = loaded_and_expiry(client)
            assert loaded is True and expires is not None
            # Already loaded: the idiom still leaves its lease (here a pin).
            client.post("/api/embed", json={"keep_alive": -1})
            assert loaded_and_expiry(client) == (True, None)
            text = client.get("/metrics").text
            assert metric(text, "lazyembed_model_load_seconds_count") >= 3
    finally:
        embedder.close()


def test_idle_unload_is_visible_in_ps_and_metrics() -> None:
    embedder = Embedder(cache_memory_mb=0, idle_timeout=1)
    try:
        with TestClient(create_app(embedder)) as client:
            client.post("/v1/embeddings", json={"input": "then sleep"})
            ps = client.get("/api/ps").json()
            if ps["models"]:  # still loaded: the countdown is shown
                assert ps["lazyembed"]["unload_in_s"] is not None
            assert wait_until(lambda: client.get("/api/ps").json()["models"] == [])

            def idle_unload_counted() -> bool:
                text = client.get("/metrics").text
                return metric(text, "lazyembed_model_unloads_total", reason="idle") >= 1

            assert wait_until(idle_unload_counted)  # the event lands as the unload finishes
            assert metric(client.get("/metrics").text, "lazyembed_model_loaded") == 0.0
            assert client.get("/api/ps").json()["lazyembed"]["state"] == "unloaded"
    finally:
        embedder.close()
