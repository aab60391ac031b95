"""The HTTP server in-process (FastAPI TestClient) and the dynamic batcher.

Vectors, statuses and lifecycle use the real model. A fake embedder appears only where a
test is about batching order or injected model failures.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lazyembed import Embedder
from lazyembed.config import KeepAlive, ServerSettings
from lazyembed.errors import ClientDisconnectedError, InvalidInputError, ModelLoadError
from lazyembed.report import LifecycleStatus, MemoryReport, State
from lazyembed.server import Batcher, InputTooLongError, create_app
from lazyembed.server.app import begin_shutdown
from lazyembed.server.batcher import BatcherClosedError

TEXTS = ["The cat sits on the mat.", "A quick brown fox.", "Embeddings map text to vectors."]
SERVED = "sentence-transformers/all-MiniLM-L6-v2"


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


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus exposition text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    match = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_until(predicate: Any, limit: float = 60.0) -> bool:
    """Poll with a generous limit (machines are noisy; no timing is asserted)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


# ---- the fake (ordering, batching and failure injection only) ------------------------------


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


async def _wait_entered(fake: FakeEmbedder) -> None:
    assert await asyncio.to_thread(fake.entered.wait, 30)


# ---- batcher --------------------------------------------------------------------------------


def test_batcher_coalesces_waiting_requests_in_order() -> None:
    fake = FakeEmbedder()
    fake.gate = threading.Event()
    batcher = make_batcher(fake, max_inputs=64, wait_ms=0)

    async def main() -> list[Any]:
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await _wait_entered(fake)  # the model is busy: the next requests queue up
        texts = [[f"text {i}", f"more {i}"] for i in range(10)]
        rest = [asyncio.ensure_future(batcher.submit(t)) for t in texts]
        await asyncio.sleep(0)
        fake.gate.set()  # type: ignore[union-attr]
        results = await asyncio.gather(first, *rest)
        await batcher.aclose()
        return [texts, results]

    texts, results = run(main())
    assert fake.calls[0][0] == ["first"]
    assert fake.calls[1][0] == [t for pair in texts for t in pair]  # one call, arrival order
    for pair, result in zip(texts, results[1:], strict=True):
        np.testing.assert_array_equal(result.vectors, np.stack([fake.vector(t) for t in pair]))
        assert result.token_counts == fake.count_tokens(pair)


def test_batcher_respects_max_size_and_max_tokens() -> None:
    fake = FakeEmbedder()
    fake.gate = threading.Event()
    batcher = make_batcher(fake, max_inputs=4, max_tokens=12, wait_ms=0)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(["x"]))
        await _wait_entered(fake)
        # 6 requests of 1 input and 4 tokens each ("a b" → 2 words + [CLS] + [SEP])
        rest = [asyncio.ensure_future(batcher.submit([f"a{i} b"])) for i in range(6)]
        await asyncio.sleep(0)
        fake.gate.set()  # type: ignore[union-attr]
        await asyncio.gather(first, *rest)
        await batcher.aclose()

    run(main())
    sizes = [len(texts) for texts, _ in fake.calls[1:]]
    assert sum(sizes) == 6
    assert max(sizes) <= 3  # 12 tokens / 4 per input, although max_size would allow 4
    assert all(len(texts) * 4 <= 12 for texts, _ in fake.calls[1:])


def test_batcher_waits_for_more_but_not_past_max_size() -> None:
    fake = FakeEmbedder()
    batcher = make_batcher(fake, max_inputs=4, wait_ms=600_000)  # only a full batch can go

    async def main() -> None:
        await asyncio.gather(*(batcher.submit([f"t{i}"]) for i in range(4)))
        await batcher.aclose()

    run(main())
    assert [texts for texts, _ in fake.calls] == [["t0", "t1", "t2", "t3"]]


def test_batcher_groups_keep_alive_values() -> None:
    fake = FakeEmbedder()
    fake.gate = threading.Event()
    batcher = make_batcher(fake, wait_ms=0)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await _wait_entered(fake)
        jobs = [
            batcher.submit(["a"]),
            batcher.submit(["b"], keep_alive=KeepAlive.after(0)),
            batcher.submit(["c"]),
            batcher.submit(["d"], keep_alive=KeepAlive.FOREVER),
        ]
        rest = [asyncio.ensure_future(j) for j in jobs]
        await asyncio.sleep(0)
        fake.gate.set()  # type: ignore[union-attr]
        await asyncio.gather(first, *rest)
        await batcher.aclose()

    run(main())
    assert fake.calls[1:] == [
        (["a", "c"], KeepAlive.DEFAULT),
        (["b"], KeepAlive.after(0)),
        (["d"], KeepAlive.FOREVER),
    ]


def test_batcher_isolates_a_bad_request_and_survives_model_errors() -> None:
    fake = FakeEmbedder()
    fake.gate = threading.Event()
    batcher = make_batcher(fake, wait_ms=0)

    async def main() -> list[Any]:
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await _wait_entered(fake)
        jobs = [batcher.submit(["ok 1"]), batcher.submit(["bad"]), batcher.submit(["ok 2"])]
        rest = [asyncio.ensure_future(j) for j in jobs]
        await asyncio.sleep(0)
        fake.gate.set()  # type: ignore[union-attr]
        outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
        fake.fail_with = RuntimeError("the model broke")
        broken = await asyncio.gather(batcher.submit(["x"]), return_exceptions=True)
        fake.fail_with = None
        after = await batcher.submit(["still up"])
        await batcher.aclose()
        return [outcomes, broken, after]

    outcomes, broken, after = run(main())
    assert isinstance(outcomes[2], InvalidInputError)
    np.testing.assert_array_equal(outcomes[1].vectors[0], fake.vector("ok 1"))
    np.testing.assert_array_equal(outcomes[3].vectors[0], fake.vector("ok 2"))
    assert isinstance(broken[0], RuntimeError)
    np.testing.assert_array_equal(after.vectors[0], fake.vector("still up"))


def test_batcher_drops_disconnected_and_cancelled_requests() -> None:
    fake = FakeEmbedder()
    fake.gate = threading.Event()
    batcher = make_batcher(fake, wait_ms=0)

    async def gone(started: bool) -> bool:
        return True

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await _wait_entered(fake)
        dropped = asyncio.ensure_future(batcher.submit(["disconnected"], is_disconnected=gone))
        cancelled = asyncio.ensure_future(batcher.submit(["cancelled"]))
        kept = asyncio.ensure_future(batcher.submit(["kept"]))
        await asyncio.sleep(0)
        cancelled.cancel()
        fake.gate.set()  # type: ignore[union-attr]
        await asyncio.gather(first, kept)
        with pytest.raises(ClientDisconnectedError):  # not a cancellation: see the guard
            await dropped
        await batcher.aclose()

    run(main())
    assert fake.calls[1:] == [(["kept"], KeepAlive.DEFAULT)]
    assert batcher.dropped == 2


def test_batcher_truncate_false_refuses_only_the_long_request() -> None:
    fake = FakeEmbedder(max_tokens=8)
    batcher = make_batcher(fake, wait_ms=50)

    async def main() -> list[Any]:
        long_text = " ".join(["word"] * 20)
        jobs = [batcher.submit([long_text], truncate=False), batcher.submit([long_text])]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.aclose()
        return outcomes

    refused, truncated = run(main())
    assert isinstance(refused, InputTooLongError)
    assert truncated.token_counts == [8]


def test_batcher_close_is_bounded_and_fails_what_is_left() -> None:
    """Past the timeout aclose fails queued and running requests and does not wait."""
    fake = FakeEmbedder()
    fake.gate = threading.Event()  # the running call cannot finish before the test says
    batcher = make_batcher(fake, wait_ms=0)

    async def main() -> list[Any]:
        running = asyncio.ensure_future(batcher.submit(["running"]))
        await _wait_entered(fake)
        queued = asyncio.ensure_future(batcher.submit(["queued"]))
        await asyncio.sleep(0)
        finished = await batcher.aclose(timeout=0.05)
        outcomes = await asyncio.gather(running, queued, return_exceptions=True)
        return [finished, *outcomes]

    try:
        finished, running, queued = run(main())
    finally:
        fake.gate.set()  # type: ignore[union-attr]  # let the abandoned thread end
    assert finished is False
    assert isinstance(running, BatcherClosedError) and "graceful timeout" in str(running)
    assert isinstance(queued, BatcherClosedError)
    assert all(texts != ["queued"] for texts, _ in fake.calls)


def test_batcher_close_within_the_timeout_answers_everything() -> None:
    fake = FakeEmbedder()
    batcher = make_batcher(fake, wait_ms=0)

    async def main() -> list[Any]:
        jobs = [asyncio.ensure_future(batcher.submit([f"t{i}"])) for i in range(3)]
        await asyncio.sleep(0)
        finished = await batcher.aclose(timeout=600)
        return [finished, *(await asyncio.gather(*jobs))]

    finished, *results = run(main())
    assert finished is True
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.vectors[0], fake.vector(f"t{i}"))


def test_graceful_remaining_counts_from_begin_shutdown() -> None:
    app = create_app(FakeEmbedder(), graceful_timeout=30)
    srv = app.state.server
    assert srv.graceful_remaining() == 30.0  # nobody said when the shutdown began
    begin_shutdown(app)
    assert 0.0 <= srv.graceful_remaining() <= 30.0
    srv.shutdown_began -= 31  # the graceful timeout has passed
    assert srv.graceful_remaining() == 0.0
    default = ServerSettings().graceful_timeout  # the one default, in the settings
    assert create_app(FakeEmbedder()).state.server.graceful_remaining() == default


def test_batcher_after_close_refuses_new_work() -> None:
    batcher = make_batcher(FakeEmbedder(), wait_ms=0)

    async def main() -> None:
        await batcher.submit(["x"])
        await batcher.aclose()
        with pytest.raises(BatcherClosedError):
            await batcher.submit(["y"])

    run(main())


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
