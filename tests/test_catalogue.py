"""The catalogue: one alias table for the whole project, names that resolve one way."""

from __future__ import annotations

import pytest

from lazyembed.models.catalogue import (
    CATALOGUE,
    DEFAULT_MODEL,
    canonical_name,
    find_entry,
    names_for,
)

ISSUE_MODELS = [
    "sentence-transformers/all-MiniLM-L6-v2",
    "sentence-transformers/all-MiniLM-L12-v2",
    "sentence-transformers/multi-qa-MiniLM-L6-cos-v1",
    "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
    "BAAI/bge-small-en-v1.5",
    "BAAI/bge-base-en-v1.5",
    "intfloat/e5-small-v2",
    "intfloat/multilingual-e5-small",
    "intfloat/multilingual-e5-base",
    "thenlper/gte-small",
    "mixedbread-ai/mxbai-embed-large-v1",
]


def test_the_models_people_use_are_listed_with_their_facts() -> None:
    listed = {entry.hub_id: entry for entry in CATALOGUE}
    assert set(ISSUE_MODELS) <= set(listed)
    for entry in CATALOGUE:
        assert entry.architecture in ("bert", "xlm-roberta")
        assert entry.dimension in (384, 768, 1024) and entry.max_seq_length >= 128
        assert entry.pooling in ("mean", "cls") and entry.licence and entry.size_mb > 0


@pytest.mark.parametrize(
    ("name", "hub_id"),
    [
        (None, DEFAULT_MODEL),
        ("", DEFAULT_MODEL),
        ("all-minilm", DEFAULT_MODEL),
        ("ALL-MiniLM:latest", DEFAULT_MODEL),
        ("all-MiniLM-L6-v2", DEFAULT_MODEL),
        ("bge-small", "BAAI/bge-small-en-v1.5"),
        ("bge-small-en-v1.5", "BAAI/bge-small-en-v1.5"),
        ("mxbai-embed-large", "mixedbread-ai/mxbai-embed-large-v1"),
        ("e5-small", "intfloat/e5-small-v2"),
        ("  ./my/folder ", "./my/folder"),
        ("someone/other-model", "someone/other-model"),
    ],
)
def test_names_resolve_one_way(name: str | None, hub_id: str) -> None:
    assert canonical_name(name) == hub_id


def test_every_name_means_one_model() -> None:
    seen: dict[str, str] = {}
    for entry in CATALOGUE:
        for name in names_for(entry.hub_id):
            assert seen.setdefault(name.lower(), entry.hub_id) == entry.hub_id
            assert find_entry(name) is entry
    assert names_for("someone/other") == ("someone/other",)
