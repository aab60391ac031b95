"""One server, several models: a `Models` registry behind ``create_app``, real models.

The second model is the tiny fixture folder ``bert-mean-norm`` (dimension 48, converts in
well under a second); the default is all-MiniLM-L6-v2 (384). Vectors are compared with
the library's own for each model; clients are the official ``openai`` and ``ollama`` ones.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import ollama
import openai
import pytest

from lazyembed import Embedder, Models
from lazyembed.config import KeepAlive
from lazyembed.models.catalogue import CATALOGUE
from lazyembed.models.resolve import locate
from lazyembed.server import create_app
from server_helpers import SERVED, TEXTS, LiveServer, metric

FIXTURE = str(Path(__file__).parent / "fixtures" / "models" / "bert-mean-norm")
_MB = 1024 * 1024


def make_models(**settings: Any) -> Models:
    options: dict[str, Any] = {"cache_memory_mb": 0, "idle_timeout": "never"}
    options.update(settings)
    return Models(**options)


@pytest.fixture(scope="module")
def fixture_reference() -> np.ndarray:
    embedder = Embedder(model=FIXTURE, cache_memory_mb=0, idle_timeout="never")
    try:
        vectors: np.ndarray = embedder.embed_numpy(TEXTS)
    finally:
        embedder.close()
    assert vectors.shape == (len(TEXTS), 48)
    return vectors


@pytest.fixture(scope="module")
def minilm_reference(shared_embedder: Any) -> np.ndarray:
    vectors: np.ndarray = shared_embedder.embed_numpy(TEXTS)
    return vectors


@pytest.fixture(scope="module")
def two() -> Iterator[tuple[Models, LiveServer]]:
    """MiniLM (the default) and the fixture, both served, no budget."""
    models = make_models(serve_models=[FIXTURE])
    with LiveServer(create_app(models, batch_wait_ms=5)) as live:
        yield models, live
    models.close()


def test_two_models_through_the_openai_client(
    two: tuple[Models, LiveServer], minilm_reference: np.ndarray, fixture_reference: np.ndarray
) -> None:
    _, live = two
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    for name, reference in [
        ("all-minilm", minilm_reference),
        (FIXTURE, fixture_reference),
        ("bert-mean-norm", fixture_reference),  # the folder's last part
        (f"{FIXTURE}/", fixture_reference),
        ("", minilm_reference),  # empty: the default model
    ]:
        result = client.embeddings.create(model=name, input=TEXTS)
        got = np.array([d.embedding for d in result.data], dtype=np.float32)
        assert np.allclose(got, reference, atol=1e-6), name
        assert result.model == (SERVED if reference is minilm_reference else FIXTURE)
    # dimensions are checked per model
    assert len(client.embeddings.create(model=FIXTURE, input="x", dimensions=48).data) == 1
    assert len(client.embeddings.create(model="all-minilm", input="x", dimensions=384).data)
    with pytest.raises(openai.UnprocessableEntityError, match="48 dimensions"):
        client.embeddings.create(model=FIXTURE, input="x", dimensions=384)
    with pytest.raises(openai.UnprocessableEntityError, match="384 dimensions"):
        client.embeddings.create(model="all-minilm", input="x", dimensions=48)


def test_two_models_through_the_ollama_client(
    two: tuple[Models, LiveServer], minilm_reference: np.ndarray, fixture_reference: np.ndarray
) -> None:
    _, live = two
    client = ollama.Client(host=live.url)
    got = client.embed(model="bert-mean-norm", input=TEXTS)
    assert np.allclose(np.array(got.embeddings), fixture_reference, atol=1e-6)
    got = client.embed(model="all-minilm", input=TEXTS)
    assert np.allclose(np.array(got.embeddings), minilm_reference, atol=1e-6)
    legacy = client.embeddings(model=FIXTURE, prompt=TEXTS[1])
    assert np.allclose(np.array(legacy.embedding), fixture_reference[1], atol=1e-6)
    running = client.ps()
    assert sorted(str(m.model) for m in running.models) == sorted([SERVED, FIXTURE])
    assert all(m.size_vram == 0 for m in running.models)
    assert [m.model for m in client.list().models] == [SERVED, FIXTURE]


def test_concurrent_requests_for_two_models_never_share_a_model_call(
    two: tuple[Models, LiveServer], minilm_reference: np.ndarray, fixture_reference: np.ndarray
) -> None:
    _, live = two
    answers: dict[int, httpx.Response] = {}
    start = threading.Barrier(16)

    def one(index: int) -> None:
        model = FIXTURE if index % 2 else "all-minilm"
        start.wait(60)
        answers[index] = httpx.post(
            f"{live.url}/api/embed", json={"model": model, "input": TEXTS}, timeout=120
        )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(answers) == 16
    for index, answer in answers.items():
        assert answer.status_code == 200, answer.text
        reference = fixture_reference if index % 2 else minilm_reference
        assert np.allclose(np.array(answer.json()["embeddings"]), reference, atol=1e-6)


def test_ps_lists_every_loaded_model_with_its_measured_size(
    two: tuple[Models, LiveServer],
) -> None:
    models, live = two
    for name in (SERVED, FIXTURE):
        assert httpx.post(f"{live.url}/api/embed", json={"model": name, "input": "x"}).is_success
    body = httpx.get(f"{live.url}/api/ps").json()
    measured = body["lazyembed_models"]
    assert list(measured) == [SERVED, FIXTURE]
    assert [m["model"] for m in body["models"]] == [SERVED, FIXTURE]
    for entry in body["models"]:
        assert entry["size"] == int(measured[entry["model"]]["model_mb"] * _MB)
        assert entry["size_vram"] == 0
        assert entry["expires_at"] is None  # idle_timeout "never"
    assert body["models"][0]["size"] > 0  # MiniLM's measured memory
    assert body["models"][0]["context_length"] == 256
    assert body["models"][1]["context_length"] == 128
    assert body["lazyembed"]["loads"] == measured[SERVED]["loads"]  # the default's, as before

    # /api/unload with a model unloads that one; /metrics counts per model and in total
    unloaded = httpx.post(f"{live.url}/api/unload", json={"model": "bert-mean-norm"}).json()
    assert unloaded["unloaded"] is True and unloaded["memory"]["state"] == "unloaded"
    assert models.loaded() == [SERVED]
    assert [m["model"] for m in httpx.get(f"{live.url}/api/ps").json()["models"]] == [SERVED]
    text = httpx.get(f"{live.url}/metrics").text
    assert metric(text, "lazyembed_model_loaded") == 1.0
    assert metric(text, "lazyembed_served_model_loaded", model=SERVED) == 1.0
    assert metric(text, "lazyembed_served_model_loaded", model=FIXTURE) == 0.0
    explicit = metric(
        text, "lazyembed_served_model_unloads_total", model=FIXTURE, reason="explicit"
    )
    assert explicit >= 1.0
    assert metric(text, "lazyembed_model_unloads_total", reason="explicit") >= explicit
    # and without a model, every model
    assert httpx.post(f"{live.url}/api/unload").json()["unloaded"] is True
    assert models.loaded() == []
    assert httpx.get(f"{live.url}/api/ps").json()["models"] == []


def test_the_load_and_unload_idiom_names_its_model(two: tuple[Models, LiveServer]) -> None:
    models, live = two
    httpx.post(f"{live.url}/api/unload")
    load = httpx.post(f"{live.url}/api/embed", json={"model": FIXTURE, "input": []})
    assert load.status_code == 200 and load.json()["embeddings"] == []
    assert models.loaded() == [FIXTURE]
    legacy = httpx.post(f"{live.url}/api/embeddings", json={"model": "all-minilm", "prompt": ""})
    assert legacy.status_code == 200
    assert sorted(models.loaded()) == sorted([SERVED, FIXTURE])
    unload = httpx.post(
        f"{live.url}/api/embed", json={"model": "bert-mean-norm", "input": "", "keep_alive": 0}
    )
    assert unload.status_code == 200
    assert models.loaded() == [SERVED]


def test_tags_and_models_list_what_is_served(two: tuple[Models, LiveServer]) -> None:
    _, live = two
    tags = httpx.get(f"{live.url}/api/tags").json()["models"]
    assert [t["name"] for t in tags] == [SERVED, FIXTURE]
    assert all(t["size"] > 0 and t["digest"] for t in tags)  # the converted files
    listed = httpx.get(f"{live.url}/v1/models").json()["data"]
    assert [m["id"] for m in listed] == [SERVED, FIXTURE]


def test_an_unknown_model_is_404_naming_what_is_served(two: tuple[Models, LiveServer]) -> None:
    _, live = two
    answer = httpx.post(
        f"{live.url}/v1/embeddings", json={"model": "nomic-embed-text", "input": "x"}
    )
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == "model_not_found"
    assert SERVED in error["message"] and FIXTURE in error["message"]
    assert "all-minilm" in error["message"]  # the aliases
    long_name = "m" * 5000
    answer = httpx.post(f"{live.url}/api/embed", json={"model": long_name, "input": "x"})
    assert answer.status_code == 404
    assert "m" * 100 + "'…" in answer.json()["error"]
    assert "m" * 101 not in answer.json()["error"]
    # another catalogue model, or a model folder not configured: not served without any_model
    for name in ("bge-small", str(Path(FIXTURE).parent / "bert-cls")):
        answer = httpx.post(f"{live.url}/api/embed", json={"model": name, "input": "x"})
        assert answer.status_code == 404, name
    assert httpx.post(f"{live.url}/api/unload", json={"model": "bge-small"}).status_code == 404


def test_a_budget_of_one_model_makes_them_take_turns(
    minilm_reference: np.ndarray, fixture_reference: np.ndarray
) -> None:
    models = make_models(serve_models=[FIXTURE], max_loaded_models=1)
    try:
        with LiveServer(create_app(models, batch_wait_ms=5)) as live:
            order = [SERVED, FIXTURE, SERVED, FIXTURE]
            for name in order:
                answer = httpx.post(
                    f"{live.url}/api/embed", json={"model": name, "input": TEXTS}, timeout=120
                )
                assert answer.status_code == 200, answer.text
                reference = minilm_reference if name == SERVED else fixture_reference
                assert np.allclose(np.array(answer.json()["embeddings"]), reference, atol=1e-6)
                ps = httpx.get(f"{live.url}/api/ps").json()
                assert [m["model"] for m in ps["models"]] == [name]
            text = httpx.get(f"{live.url}/metrics").text
        budget = {
            report.model: [
                e
                for e in report.lifecycle.events
                if e["kind"] == "unload" and e["reason"] == "budget"
            ]
            for report in models.memory_reports(events=True)
        }
        assert len(budget[SERVED]) == 2 and len(budget[FIXTURE]) == 1
        assert metric(text, "lazyembed_model_unloads_total", reason="budget") == 3.0
        assert (
            metric(text, "lazyembed_served_model_unloads_total", model=SERVED, reason="budget") == 2
        )
    finally:
        models.close()


def test_a_budget_of_one_model_serves_concurrent_requests_for_both(
    minilm_reference: np.ndarray, fixture_reference: np.ndarray
) -> None:
    models = make_models(serve_models=[FIXTURE], max_loaded_models=1)
    answers: list[tuple[str, httpx.Response]] = []
    try:
        with LiveServer(create_app(models, batch_wait_ms=5)) as live:

            def client(name: str) -> None:
                for _ in range(3):
                    answer = httpx.post(
                        f"{live.url}/api/embed", json={"model": name, "input": TEXTS}, timeout=120
                    )
                    answers.append((name, answer))

            threads = [threading.Thread(target=client, args=(n,)) for n in (SERVED, FIXTURE)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(300)
        assert len(answers) == 6
        for name, answer in answers:
            assert answer.status_code == 200, answer.text
            reference = minilm_reference if name == SERVED else fixture_reference
            assert np.allclose(np.array(answer.json()["embeddings"]), reference, atol=1e-6)
        assert len(models.loaded()) <= 1
    finally:
        models.close()


def test_no_room_within_load_timeout_is_503_naming_what_holds_the_memory() -> None:
    models = make_models(serve_models=[FIXTURE], max_loaded_models=1, load_timeout=0.2)
    try:
        with LiveServer(create_app(models, batch_wait_ms=5)) as live:
            busy = models.get(SERVED)
            with busy.lifecycle.acquire(KeepAlive.FOREVER):
                pass  # its lease pins it
            with busy.lifecycle.acquire():  # and a call in flight
                openai_answer = httpx.post(
                    f"{live.url}/v1/embeddings", json={"model": FIXTURE, "input": "x"}
                )
                ollama_answer = httpx.post(
                    f"{live.url}/api/embed", json={"model": FIXTURE, "input": "x"}
                )
                idiom = httpx.post(f"{live.url}/api/embed", json={"model": FIXTURE, "input": ""})
            assert (
                openai_answer.status_code == ollama_answer.status_code == idiom.status_code == 503
            )
            error = openai_answer.json()["error"]
            assert error["code"] == "model_unavailable" and error["type"] == "server_error"
            for message in (error["message"], ollama_answer.json()["error"], idiom.json()["error"]):
                assert f"no room to load {FIXTURE}" in message
                assert SERVED in message and "1 call(s) in flight" in message
                assert "pinned" in message and "max_loaded_models=1" in message
            # once the call is over, the pinned model makes room (nothing else could)
            answer = httpx.post(f"{live.url}/api/embed", json={"model": FIXTURE, "input": "x"})
            assert answer.status_code == 200
        (unload,) = [
            e for e in busy.memory_report(events=True).lifecycle.events if e["kind"] == "unload"
        ]
        assert unload["reason"] == "budget" and unload.get("note") == "was pinned"
    finally:
        models.close()


def fake_hub_cache(root: Path, hub_id: str, weights_of: str) -> Path:
    """A hub cache (``HF_HUB_CACHE``) holding ``hub_id`` with the files of ``weights_of``."""
    repo = root / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    shutil.copytree(weights_of, repo / "snapshots" / "0123abcd")
    return root


def test_any_model_serves_catalogue_models_and_folders_present_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixture_reference: np.ndarray
) -> None:
    # Here: MiniLM (its package), bge-small (a hub cache holding the fixture's files under
    # that name) and a model folder; every other catalogue model is absent.
    bge = "BAAI/bge-small-en-v1.5"
    monkeypatch.setenv("HF_HUB_CACHE", str(fake_hub_cache(tmp_path / "hub", bge, FIXTURE)))
    folder = str(shutil.copytree(FIXTURE, tmp_path / "on-demand"))
    absent = next(e.hub_id for e in CATALOGUE if e.hub_id not in (SERVED, bge))
    assert locate(absent) is None
    models = make_models()  # serves MiniLM only, from the start
    try:
        with LiveServer(create_app(models, any_model=True, batch_wait_ms=5)) as live:
            tags = httpx.get(f"{live.url}/api/tags").json()["models"]
            assert [t["name"] for t in tags] == [SERVED, bge]
            weights = Path(FIXTURE, "model.safetensors").stat().st_size
            assert tags[1]["size"] == weights and tags[1]["details"]["family"] == "bert"

            answer = httpx.post(
                f"{live.url}/api/embed", json={"model": f"{folder}/", "input": TEXTS}
            )
            assert answer.status_code == 200, answer.text
            assert np.allclose(np.array(answer.json()["embeddings"]), fixture_reference, atol=1e-6)
            assert answer.json()["model"] == f"{folder}/"
            again = httpx.post(f"{live.url}/v1/embeddings", json={"model": folder, "input": "x"})
            assert again.json()["model"] == folder  # the same model, named without "/"
            by_alias = httpx.post(
                f"{live.url}/v1/embeddings", json={"model": "bge-small", "input": TEXTS}
            )
            assert by_alias.status_code == 200 and by_alias.json()["model"] == bge
            got = np.array([d["embedding"] for d in by_alias.json()["data"]])
            assert np.allclose(got, fixture_reference, atol=1e-6)

            ids = [m["id"] for m in httpx.get(f"{live.url}/v1/models").json()["data"]]
            assert ids == [SERVED, folder, bge]  # served first, in the order they came
            ps = httpx.get(f"{live.url}/api/ps").json()
            assert [m["model"] for m in ps["models"]] == [folder, bge]  # MiniLM never loaded
            missing = httpx.post(f"{live.url}/api/embed", json={"model": absent, "input": "x"})
            assert missing.status_code == 404
            assert "present on this machine" in missing.json()["error"]
            not_a_model = httpx.post(
                f"{live.url}/api/embed", json={"model": str(tmp_path), "input": "x"}
            )
            assert not_a_model.status_code == 404
        assert models.names() == [SERVED, folder, bge]
    finally:
        models.close()
