"""The catalogue: one alias table for the whole project, names that resolve one way."""

from __future__ import annotations

import dataclasses
import re
from types import MappingProxyType

import pytest

from lazyembed.models.catalogue import (
    CATALOGUE,
    DEFAULT_MODEL,
    CatalogueEntry,
    canonical_name,
    find_entry,
    names_for,
    native_model_types,
    run_status,
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


#: The models local tools use in 2026 (issue 21), by the name Ollama gives them where it
#: has one (else the hub id), with their config.json model type.
MODELS_2026 = {
    "nomic-embed-text": ("nomic-ai/nomic-embed-text-v1.5", "nomic_bert"),
    "embeddinggemma": ("google/embeddinggemma-300m", "gemma3_text"),
    "qwen3-embedding:0.6b": ("Qwen/Qwen3-Embedding-0.6B", "qwen3"),
    "all-mpnet-base-v2": ("sentence-transformers/all-mpnet-base-v2", "mpnet"),
    "gte-modernbert-base": ("Alibaba-NLP/gte-modernbert-base", "modernbert"),
    "snowflake-arctic-embed:33m": ("Snowflake/snowflake-arctic-embed-s", "bert"),
    "snowflake-arctic-embed:110m": ("Snowflake/snowflake-arctic-embed-m", "bert"),
    "snowflake-arctic-embed:335m": ("Snowflake/snowflake-arctic-embed-l", "bert"),
    "snowflake-arctic-embed2": ("Snowflake/snowflake-arctic-embed-l-v2.0", "xlm-roberta"),
    "bge-m3": ("BAAI/bge-m3", "xlm-roberta"),
    "multilingual-e5-large": ("intfloat/multilingual-e5-large", "xlm-roberta"),
    "granite-embedding-small-english-r2": (
        "ibm-granite/granite-embedding-small-english-r2",
        "modernbert",
    ),
}
POOLING = ("mean", "cls", "lasttoken")


def test_the_models_people_use_are_listed_with_their_facts() -> None:
    listed = {entry.hub_id: entry for entry in CATALOGUE}
    assert set(ISSUE_MODELS) <= set(listed)
    assert len(CATALOGUE) == len(ISSUE_MODELS) + len(MODELS_2026)
    for entry in CATALOGUE:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", entry.hub_id), entry.hub_id
        assert re.fullmatch(r"[a-z0-9_-]+", entry.model_type), entry.model_type
        assert entry.architecture == entry.model_type
        assert entry.dimension in (384, 768, 1024) and entry.max_seq_length >= 128
        assert entry.pooling in POOLING and entry.licence
        assert entry.size_mb is not None or entry.parameters_m is not None, entry.hub_id
        assert all(n is None or n > 0 for n in (entry.size_mb, entry.parameters_m))
        assert entry.normalize in (True, False, None)
        assert all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in entry.prompts.items()
        )
        assert isinstance(entry.prompts, MappingProxyType)  # a shared table nobody may change
        if entry.ollama is not None:
            assert find_entry(entry.ollama) is entry
        if entry.export_elsewhere is not None:
            assert not entry.onnx_export  # only named where the model's own repo has none


@pytest.mark.parametrize("name", sorted(MODELS_2026))
def test_the_models_of_2026_resolve_by_their_ollama_or_hub_name(name: str) -> None:
    hub_id, model_type = MODELS_2026[name]
    entry = find_entry(name)
    assert entry is not None and entry.hub_id == hub_id and entry.model_type == model_type
    assert canonical_name(name.upper()) == hub_id


def test_published_prompts_are_kept_exactly() -> None:
    """The strings as the models publish them: a changed space changes every vector."""
    nomic = find_entry("nomic-embed-text")
    gemma = find_entry("embeddinggemma")
    qwen = find_entry("qwen3-embedding:0.6b")
    arctic2 = find_entry("snowflake-arctic-embed2")
    assert nomic is not None and gemma is not None and qwen is not None and arctic2 is not None
    assert nomic.prompts["query"] == "search_query: "
    assert nomic.prompts["document"] == "search_document: "
    assert gemma.prompts["query"] == "task: search result | query: "
    assert gemma.prompts["document"] == "title: none | text: "
    assert gemma.prompts["STS"] == "task: sentence similarity | query: "
    assert qwen.prompts["query"] == (
        "Instruct: Given a web search query, retrieve relevant passages that answer the query"
        "\nQuery:"
    )
    assert arctic2.prompts == {"query": "query: "}
    for name in ("snowflake-arctic-embed:33m", "snowflake-arctic-embed", "bge-small"):
        entry = find_entry(name)
        assert entry is not None
        assert entry.prompts["query"] == "Represent this sentence for searching relevant passages: "


# ---- how each model runs ----------------------------------------------------------------


def _entry(**changes: object) -> CatalogueEntry:
    base = find_entry("nomic-embed-text")
    assert base is not None
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_native_comes_from_the_converters_one_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from lazyembed.models import architectures

    assert native_model_types() == architectures.native_model_types()
    entry = _entry(model_type="mpnet", onnx_export=True)
    monkeypatch.setattr(architectures, "_BUILDERS", {"bert": ""})
    assert run_status(entry).runs == "export"
    monkeypatch.setattr(architectures, "_BUILDERS", {"bert": "", "mpnet": ""})
    assert native_model_types() == {"bert", "mpnet"}
    status = run_status(entry)
    assert status.runs == "native" and "converts mpnet" in status.why
    assert run_status(_entry(model_type="xlm-roberta")).runs == "export"  # now not native


@pytest.mark.parametrize(
    ("onnx_export", "elsewhere", "local", "runs", "why"),
    [
        (True, None, False, "export", "nomic-ai/nomic-embed-text-v1.5 publishes onnx/model.onnx"),
        (False, None, True, "export", "runs the local folder's onnx/model.onnx"),
        (None, None, True, "export", "runs the local folder's onnx/model.onnx"),
        (False, None, False, "not yet", "publishes no onnx/model.onnx"),
        (None, None, False, "not yet", "is not known"),
        (False, "onnx-community/x-ONNX", False, "not yet", "onnx-community/x-ONNX publishes"),
    ],
)
def test_not_native_runs_through_an_export_or_not_yet_saying_why(
    monkeypatch: pytest.MonkeyPatch,
    onnx_export: bool | None,
    elsewhere: str | None,
    local: bool,
    runs: str,
    why: str,
) -> None:
    from lazyembed.models import architectures

    monkeypatch.setattr(architectures, "_BUILDERS", {"bert": ""})
    entry = _entry(onnx_export=onnx_export, export_elsewhere=elsewhere)
    status = run_status(entry, local_export=local)
    assert status.runs == runs
    assert why in status.why and "does not convert nomic_bert" in status.why


def test_the_catalogue_says_how_each_model_of_2026_runs_today() -> None:
    """Native for the types lazyembed converts; the rest need their export, or wait."""
    runs = {name: run_status(e).runs for name in MODELS_2026 if (e := find_entry(name))}
    native = {n for n, (_, kind) in MODELS_2026.items() if kind in native_model_types()}
    assert {n for n, r in runs.items() if r == "native"} == native
    for name in set(MODELS_2026) - native:
        entry = find_entry(name)
        assert entry is not None
        assert runs[name] == ("export" if entry.onnx_export else "not yet"), name


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
