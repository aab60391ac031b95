"""LlamaIndex adapter: a real in-memory VectorStoreIndex retrieves with lazyembed vectors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import MetadataMode

from lazyembed import Embedder
from lazyembed.integrations.llama_index import LazyEmbedEmbedding

DOCUMENTS = {
    "cooking": "Simmer the tomato sauce with garlic and basil for twenty minutes.",
    "astronomy": "Jupiter is the largest planet of the solar system, a gas giant.",
    "football": "The striker scored twice in the second half to win the match.",
    "finance": "Central banks raised interest rates to slow down inflation.",
}


@pytest.fixture
def global_embed_model(shared_embedder: Embedder) -> Iterator[LazyEmbedEmbedding]:
    model = LazyEmbedEmbedding(embedder=shared_embedder, embed_batch_size=2)
    Settings.embed_model = model
    try:
        yield model
    finally:
        Settings._embed_model = None  # back to LlamaIndex's unset default


def test_vector_store_index_retrieves_the_right_document(
    global_embed_model: LazyEmbedEmbedding, shared_embedder: Embedder
) -> None:
    documents = [Document(text=text, doc_id=key) for key, text in DOCUMENTS.items()]
    index = VectorStoreIndex.from_documents(documents)  # uses Settings.embed_model
    retriever = index.as_retriever(similarity_top_k=1)
    queries = {
        "Which planet is biggest?": "astronomy",
        "How do I make pasta sauce?": "cooking",
        "Who won the soccer game?": "football",
        "Why are mortgages getting more expensive?": "finance",
    }
    for query, expected in queries.items():
        (hit,) = retriever.retrieve(query)
        assert hit.node.ref_doc_id == expected, query
    for node_id, node in index.docstore.docs.items():
        content = node.get_content(metadata_mode=MetadataMode.EMBED)
        expected = shared_embedder.embed_numpy(content)[0]
        assert np.allclose(index.vector_store.get(node_id), expected, rtol=0, atol=1e-6)


def test_is_a_lazy_base_embedding_with_the_embedder_private(shared_embedder: Embedder) -> None:
    model = LazyEmbedEmbedding(cache_memory_mb=0, embed_batch_size=7)
    try:
        assert isinstance(model, BaseEmbedding)
        assert not model.embedder.is_loaded  # built, not loaded
        assert "_embedder" in LazyEmbedEmbedding.__private_attributes__
        assert model.embed_batch_size == 7
        assert model.class_name() == "LazyEmbedEmbedding"
        assert model.lazyembed_settings == {"cache_memory_mb": 0}
        data = model.to_dict()
        assert data["model_name"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert "_embedder" not in data and "embedder" not in data
        texts = ["one text", "another text", "a third"]
        assert model.get_text_embedding_batch(texts) == shared_embedder.embed(texts)
        assert model.embedder.is_loaded
        assert model.get_query_embedding("q") == shared_embedder.embed("q")
    finally:
        model.close()


def test_model_name_round_trips_through_to_dict() -> None:
    original = LazyEmbedEmbedding("all-MiniLM-L6-v2", idle_timeout="5m", embed_batch_size=3)
    copy = LazyEmbedEmbedding.from_dict(original.to_dict())
    try:
        assert copy.model_name == original.model_name
        assert (copy.idle_timeout, copy.embed_batch_size) == ("5m", 3)
    finally:
        original.close()
        copy.close()


async def test_async_embeddings_equal_the_sync_ones(shared_embedder: Embedder) -> None:
    model = LazyEmbedEmbedding(embedder=shared_embedder)
    texts = ["async one", "async two", "async three"]
    assert await model.aget_text_embedding_batch(texts) == shared_embedder.embed(texts)
    assert await model.aget_text_embedding(texts[0]) == shared_embedder.embed(texts[0])
    assert await model.aget_query_embedding("async q") == shared_embedder.embed("async q")


def test_unloads_when_idle(clock: Any) -> None:
    model = LazyEmbedEmbedding(idle_timeout=30, cache_memory_mb=0, clock=clock)
    try:
        model.get_text_embedding("load")
        clock.now += 31
        assert model.embedder._lifecycle.poll() == "idle"
        assert not model.embedder.is_loaded
    finally:
        model.close()
