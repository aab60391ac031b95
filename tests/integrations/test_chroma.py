"""Chroma adapter: a registered EmbeddingFunction that a fresh process rebuilds from config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import chromadb
import numpy as np
import pytest
from chromadb.utils.embedding_functions import config_to_embedding_function

from lazyembed import Embedder
from lazyembed.errors import ConfigError
from lazyembed.integrations.chroma import LazyEmbedEmbeddingFunction

DOCUMENTS = {
    "cooking": "Simmer the tomato sauce with garlic and basil for twenty minutes.",
    "astronomy": "Jupiter is the largest planet of the solar system, a gas giant.",
    "finance": "Central banks raised interest rates to slow down inflation.",
}
QUERY = "Which planet is biggest?"

REOPEN = """
import json, sys
import chromadb
import lazyembed.integrations.chroma  # registers "lazyembed" in this process
settings = chromadb.Settings(anonymized_telemetry=False)
client = chromadb.PersistentClient(path=sys.argv[1], settings=settings)
collection = client.get_collection("docs")  # no embedding_function passed
result = collection.query(query_texts=[sys.argv[2]], n_results=1, include=["distances"])
function = collection.configuration["embedding_function"]
print(json.dumps({
    "id": result["ids"][0][0],
    "distance": result["distances"][0][0],
    "class": type(function).__name__,
    "config": function.get_config(),
    "space": collection.configuration["hnsw"]["space"],
    "query_vector": function.embed_query([sys.argv[2]])[0].tolist(),
}))
"""


@pytest.fixture
def chroma_path(tmp_path: Path) -> Path:
    return tmp_path / "chroma"


@pytest.fixture
def client(chroma_path: Path) -> Iterator[chromadb.ClientAPI]:
    yield chromadb.PersistentClient(
        path=str(chroma_path), settings=chromadb.Settings(anonymized_telemetry=False)
    )


def test_a_fresh_process_reopens_the_collection_from_its_stored_config(
    client: chromadb.ClientAPI, chroma_path: Path, shared_embedder: Embedder
) -> None:
    function = LazyEmbedEmbeddingFunction(cache_memory_mb=0, idle_timeout="10m")
    collection = client.create_collection("docs", embedding_function=function)
    collection.add(ids=list(DOCUMENTS), documents=list(DOCUMENTS.values()))
    stored = collection.get(ids=["astronomy"], include=["embeddings"])["embeddings"][0]
    assert np.array_equal(stored, shared_embedder.embed_numpy(DOCUMENTS["astronomy"])[0])
    function.close()

    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(REOPEN), str(chroma_path), QUERY],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    answer = json.loads(child.stdout.strip().splitlines()[-1])
    assert answer["id"] == "astronomy"
    assert answer["class"] == "LazyEmbedEmbeddingFunction"
    assert answer["config"] == function.get_config()
    assert answer["space"] == "cosine"
    query = shared_embedder.embed_numpy(QUERY)[0]
    assert np.allclose(answer["query_vector"], query, rtol=0, atol=1e-6)
    cosine = float(np.dot(query, stored))
    assert answer["distance"] == pytest.approx(1 - cosine, abs=1e-5)


def test_config_is_json_and_builds_the_same_function() -> None:
    function = LazyEmbedEmbeddingFunction(variant="fp32", cache_memory_mb=0, idle_timeout=90)
    config = function.get_config()
    assert json.loads(json.dumps(config)) == config
    assert config == {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "variant": "fp32",
        "idle_timeout": 90,
        "keep_alive": None,
        "settings": {"cache_memory_mb": 0},
    }
    rebuilt = config_to_embedding_function({"name": "lazyembed", "config": config})
    assert isinstance(rebuilt, LazyEmbedEmbeddingFunction)
    assert rebuilt.get_config() == config
    assert LazyEmbedEmbeddingFunction.name() == "lazyembed"
    assert function.default_space() == "cosine"
    assert set(function.supported_spaces()) == {"cosine", "ip", "l2"}
    assert not function.is_legacy()
    function.close()
    rebuilt.close()


def test_returns_float32_arrays_and_is_lazy(shared_embedder: Embedder) -> None:
    function = LazyEmbedEmbeddingFunction(cache_memory_mb=0)
    assert not function.embedder.is_loaded
    vectors = function(["one", "two"])
    assert function.embedder.is_loaded
    assert [(v.dtype, v.shape) for v in vectors] == [(np.float32, (384,))] * 2
    assert np.array_equal(np.stack(vectors), shared_embedder.embed_numpy(["one", "two"]))
    function.close()


def test_settings_a_collection_cannot_store_are_refused(clock: object) -> None:
    with pytest.raises(ConfigError, match="cannot be stored"):
        LazyEmbedEmbeddingFunction(clock=clock)


def test_the_model_of_a_collection_cannot_change(shared_embedder: Embedder) -> None:
    function = LazyEmbedEmbeddingFunction(embedder=shared_embedder)
    old = function.get_config()
    function.validate_config_update(old, {"idle_timeout": "1h"})
    with pytest.raises(ConfigError, match="model"):
        function.validate_config_update(old, {"model": "other/model"})
    with pytest.raises(ConfigError, match="variant"):
        function.validate_config_update(old, {"variant": "int8"})
    with pytest.raises(ConfigError, match="unknown keys"):
        LazyEmbedEmbeddingFunction.validate_config({**old, "extra": 1})
