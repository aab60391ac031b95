"""Prompts as sentence-transformers applies them: by name, by text, the default, roles."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lazyembed import Embedder
from lazyembed.errors import InputTypeError, ModelConversionError, PromptNotFoundError
from lazyembed.models.prompts import Prompts, read_prompts

PROMPTS = {"query": "query: ", "passage": "passage: "}


def prompted_copy(model_dir: Path, tmp: Path, **config: object) -> Path:
    """The real MiniLM with a config_sentence_transformers.json of our choosing."""
    folder = tmp / "prompted"
    shutil.copytree(model_dir, folder, symlinks=True)
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def prompted(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedder]:
    folder = prompted_copy(model_dir, tmp_path_factory.mktemp("p"), prompts=PROMPTS)
    embedder = Embedder(str(folder), cache_memory_mb=0, idle_timeout="never")
    yield embedder
    embedder.close()


def test_prompt_name_prepends_the_models_prompt_text(
    prompted: Embedder, shared_embedder: Embedder
) -> None:
    by_name = prompted.embed("how do leases work", prompt_name="query")
    by_hand = shared_embedder.embed("query: how do leases work")
    plain = shared_embedder.embed("how do leases work")
    assert np.allclose(by_name, by_hand, atol=1e-6)
    assert not np.allclose(by_name, plain, atol=1e-3)
    assert np.allclose(
        prompted.embed_numpy(["a", "b"], prompt_name="passage"),
        shared_embedder.embed_numpy(["passage: a", "passage: b"]),
        atol=1e-6,
    )


def test_an_explicit_prompt_wins_and_is_any_text(
    prompted: Embedder, shared_embedder: Embedder
) -> None:
    vector = prompted.embed(["x"], prompt="Represent this: ", prompt_name="query")[0]
    assert np.allclose(vector, shared_embedder.embed("Represent this: x"), atol=1e-6)


def test_query_and_document_roles_pick_the_models_prompts(
    prompted: Embedder, shared_embedder: Embedder
) -> None:
    assert np.allclose(
        prompted.embed_query("leases"), shared_embedder.embed("query: leases"), atol=1e-6
    )
    assert np.allclose(
        prompted.embed_documents(["leases"])[0],
        shared_embedder.embed("passage: leases"),
        atol=1e-6,
    )
    # A model without prompts embeds queries and documents as they are.
    assert np.allclose(
        shared_embedder.embed_query("leases"), shared_embedder.embed("leases"), atol=0
    )
    with pytest.raises(InputTypeError):
        prompted.embed_documents("one string")


def test_an_unknown_prompt_name_is_a_typed_error_listing_the_prompts(prompted: Embedder) -> None:
    with pytest.raises(PromptNotFoundError, match="'query', 'passage'") as info:
        prompted.embed("x", prompt_name="search")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(InputTypeError):
        prompted.embed("x", prompt_name=3)  # type: ignore[arg-type]


def test_the_default_prompt_applies_when_a_call_names_none(
    model_dir: Path, tmp_path: Path, shared_embedder: Embedder
) -> None:
    folder = prompted_copy(model_dir, tmp_path, prompts=PROMPTS, default_prompt_name="query")
    embedder = Embedder(str(folder), cache_memory_mb=0)
    try:
        assert np.allclose(embedder.embed("x"), shared_embedder.embed("query: x"), atol=1e-6)
        assert np.allclose(embedder.embed(["x"])[0], shared_embedder.embed("query: x"), atol=1e-6)
        assert np.allclose(
            embedder.embed("x", prompt=""), shared_embedder.embed("x"), atol=1e-6
        )  # an explicit empty prompt turns the default off, as in sentence-transformers
    finally:
        embedder.close()


def test_the_prompt_is_part_of_the_cache_key(model_dir: Path, tmp_path: Path) -> None:
    folder = prompted_copy(model_dir, tmp_path, prompts=PROMPTS)
    embedder = Embedder(str(folder), idle_timeout="never")
    try:
        plain = embedder.embed("same text")
        queried = embedder.embed("same text", prompt_name="query")
        assert not np.allclose(plain, queried, atol=1e-3)  # not served from plain's entry
        assert embedder.get_memory_usage()["cache"]["hits"] == 0
        assert embedder.embed("same text", prompt_name="query") == queried
        assert embedder.get_memory_usage()["cache"]["hits"] == 1
    finally:
        embedder.close()


def test_reading_prompts(tmp_path: Path) -> None:
    assert read_prompts(tmp_path) == Prompts()
    (tmp_path / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": PROMPTS, "default_prompt_name": "nope"})
    )
    with pytest.raises(ModelConversionError, match="default_prompt_name 'nope'"):
        read_prompts(tmp_path)
    (tmp_path / "config_sentence_transformers.json").write_text("{broken")
    with pytest.raises(ModelConversionError, match="cannot read"):
        read_prompts(tmp_path)


def test_a_prompt_left_out_of_the_pooling_keys_the_cache_apart() -> None:
    """include_prompt: false (a fixture model): the vector of prompt + text is not the
    vector of the same characters sent without a prompt, and the cache keeps them apart."""
    folder = Path(__file__).parent / "fixtures" / "models" / "bert-classic-exclude-prompt"
    embedder = Embedder(str(folder), idle_timeout="never")
    try:
        prompted = embedder.embed("leases", prompt_name="query")
        literal = embedder.embed("query: leases")  # the same characters, no prompt
        assert not np.allclose(prompted, literal, atol=1e-4)
        assert np.allclose(prompted, embedder.embed(["leases"], prompt_name="query")[0])
        assert embedder.embed("leases", prompt_name="query") == prompted  # a cache hit
        assert embedder.get_memory_usage()["cache"]["hits"] >= 1
    finally:
        embedder.close()
