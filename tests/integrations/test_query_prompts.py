"""Every adapter embeds queries with the model's query prompt, documents with its passage one.

The prompted model (below) is MiniLM with a "query: " and a "passage: " prompt, so an
adapter's vectors must equal plain MiniLM's for the prefixed texts.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazyembed import Embedder
from lazyembed.integrations.chroma import LazyEmbedEmbeddingFunction
from lazyembed.integrations.langchain import LazyEmbedEmbeddings
from lazyembed.integrations.llama_index import LazyEmbedEmbedding

Embed = Callable[[Any, list[str]], Any]
QUERY_PROMPT = "query: "
DOCUMENT_PROMPT = "passage: "

ADAPTERS: dict[str, tuple[Callable[[Embedder], Any], Embed, Embed]] = {
    "langchain": (
        lambda e: LazyEmbedEmbeddings(embedder=e),
        lambda a, texts: [a.embed_query(t) for t in texts],
        lambda a, texts: a.embed_documents(texts),
    ),
    "llama_index": (
        lambda e: LazyEmbedEmbedding(embedder=e),
        lambda a, texts: [a.get_query_embedding(t) for t in texts],
        lambda a, texts: a.get_text_embedding_batch(texts),
    ),
    "chroma": (
        lambda e: LazyEmbedEmbeddingFunction(embedder=e),
        lambda a, texts: a.embed_query(texts),
        lambda a, texts: a(texts),
    ),
}


@pytest.fixture(scope="module")
def prompted_embedder(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Embedder]:
    """The real MiniLM given a query and a passage prompt (as e5-style models have)."""
    folder = tmp_path_factory.mktemp("prompted") / "model"
    shutil.copytree(model_dir, folder, symlinks=True)
    config = {"prompts": {"query": QUERY_PROMPT, "passage": DOCUMENT_PROMPT}}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    embedder = Embedder(str(folder), cache_memory_mb=0, idle_timeout="never")
    yield embedder
    embedder.close()


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_queries_and_documents_use_their_prompts(
    name: str, prompted_embedder: Embedder, shared_embedder: Embedder
) -> None:
    build, queries, documents = ADAPTERS[name]
    adapter = build(prompted_embedder)
    texts = ["where is the station", "the station is north of the river"]
    q = np.asarray(queries(adapter, texts), dtype=np.float32)
    d = np.asarray(documents(adapter, texts), dtype=np.float32)
    expected_q = shared_embedder.embed_numpy([QUERY_PROMPT + t for t in texts])
    expected_d = shared_embedder.embed_numpy([DOCUMENT_PROMPT + t for t in texts])
    assert np.allclose(q, expected_q, rtol=0, atol=1e-6)
    assert np.allclose(d, expected_d, rtol=0, atol=1e-6)
    assert not np.allclose(q, d, atol=1e-3)  # the two prompts really differ


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_a_model_without_prompts_gives_plain_vectors(name: str, shared_embedder: Any) -> None:
    # all-MiniLM-L6-v2 itself has no prompts: queries and documents are plain vectors.
    build, queries, documents = ADAPTERS[name]
    adapter = build(shared_embedder)
    texts = ["plain one", "plain two"]
    expected = shared_embedder.embed_numpy(texts)
    assert np.allclose(np.asarray(queries(adapter, texts)), expected, rtol=0, atol=1e-6)
    assert np.allclose(np.asarray(documents(adapter, texts)), expected, rtol=0, atol=1e-6)
