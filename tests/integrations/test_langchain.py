"""LangChain adapter: langchain-tests' own standard suites, plus lifecycle and fidelity."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from lazyembed import Embedder
from lazyembed.errors import ConfigError
from lazyembed.integrations.langchain import LazyEmbedEmbeddings

PARAMS: dict[str, Any] = {"cache_memory_mb": 0, "idle_timeout": "1m"}


class TestLazyEmbedEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[LazyEmbedEmbeddings]:
        return LazyEmbedEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return PARAMS


class TestLazyEmbedEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[LazyEmbedEmbeddings]:
        return LazyEmbedEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return PARAMS


@pytest.fixture
def embeddings(shared_embedder: Embedder) -> Iterator[LazyEmbedEmbeddings]:
    with LazyEmbedEmbeddings(embedder=shared_embedder) as adapter:
        yield adapter
    shared_embedder.embed_numpy("still open")  # a shared Embedder is not closed with it


def test_defaults_build_an_unloaded_embedder_that_loads_on_first_use() -> None:
    with LazyEmbedEmbeddings() as adapter:
        assert isinstance(adapter, Embeddings)
        assert adapter.embedder.model_name == "sentence-transformers/all-MiniLM-L6-v2"
        assert not adapter.embedder.is_loaded
        assert len(adapter.embed_query("first use")) == 384
        assert adapter.embedder.is_loaded


def test_vectors_are_the_library_vectors(
    embeddings: LazyEmbedEmbeddings, shared_embedder: Embedder
) -> None:
    texts = ["a cat sat on the mat", "stock markets fell", ""]
    assert embeddings.embed_documents(texts) == shared_embedder.embed(texts)
    assert embeddings.embed_query(texts[0]) == shared_embedder.embed(texts[0])
    assert embeddings.embed_documents([]) == []


def test_unloads_when_idle_like_any_embedder(clock: Any) -> None:
    with LazyEmbedEmbeddings(idle_timeout=60, cache_memory_mb=0, clock=clock) as adapter:
        adapter.embed_documents(["load me"])
        assert adapter.embedder.is_loaded
        clock.now += 61
        assert adapter.embedder._lifecycle.poll() == "idle"
        assert not adapter.embedder.is_loaded
        adapter.embed_query("and again")  # reloads on the next use
        assert adapter.embedder.get_memory_usage()["loads"] == 2


def test_keep_alive_is_passed_to_every_call(shared_embedder: Embedder) -> None:
    with LazyEmbedEmbeddings(cache_memory_mb=0, idle_timeout="never", keep_alive=0) as adapter:
        adapter.embed_query("gone right after")
        assert not adapter.embedder.is_loaded


def test_embedder_and_settings_are_exclusive(shared_embedder: Embedder) -> None:
    with pytest.raises(ConfigError, match="either embedder="):
        LazyEmbedEmbeddings("all-MiniLM-L6-v2", embedder=shared_embedder)
    with pytest.raises(ConfigError, match="either embedder="):
        LazyEmbedEmbeddings(embedder=shared_embedder, variant="int8")


@pytest.mark.parametrize("method", ["embed_documents", "embed_query"])
async def test_async_methods_do_not_block_the_event_loop(
    embeddings: LazyEmbedEmbeddings, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    # The model call waits for the loop to run another step: a call made on the loop's
    # own thread would wait forever (here: fail after the timeout).
    released = threading.Event()
    threads: list[int] = []
    sync = getattr(embeddings, method)

    def gated(arg: Any) -> Any:
        threads.append(threading.get_ident())
        assert released.wait(10), "the event loop was blocked by the model call"
        return sync(arg)

    monkeypatch.setattr(embeddings, method, gated)
    arg: Any = ["async docs"] if method == "embed_documents" else "async query"
    task = asyncio.ensure_future(getattr(embeddings, "a" + method)(arg))
    await asyncio.sleep(0)
    released.set()
    result = await task
    assert threads and threads[0] != threading.get_ident()
    expected = embeddings.embedder.embed(arg)
    assert np.array_equal(result, expected)
