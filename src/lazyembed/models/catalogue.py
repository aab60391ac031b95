"""The models lazyembed knows by name: hub ids, the aliases people type, and their facts.

This is the project's one alias table: the resolver, the server (`/api/tags`,
`/v1/models`, the ``model`` field of a request) and ``lazyembed models`` all read it.
The facts here (dimension, pooling, prompts, ...) describe the published model for
listings; what the encoder uses is always read from the model's own folder (`info.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class CatalogueEntry:
    """One model as published on the hub."""

    hub_id: str
    aliases: tuple[str, ...]
    architecture: str  # config.json model_type: "bert", "xlm-roberta"
    dimension: int
    pooling: str  # "mean", "cls", ...
    normalize: bool
    max_seq_length: int
    licence: str
    size_mb: int  # the safetensors weights, fp32 (MiB)
    prompts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def short_name(self) -> str:
        return self.hub_id.rsplit("/", 1)[-1]


_RETRIEVAL = "Represent this sentence for searching relevant passages: "
_E5 = {"query": "query: ", "passage": "passage: "}


def _prompts(table: dict[str, str]) -> Mapping[str, str]:
    return MappingProxyType(table)


CATALOGUE: tuple[CatalogueEntry, ...] = (
    CatalogueEntry(
        hub_id=DEFAULT_MODEL,
        aliases=(
            "all-minilm",
            "all-minilm:latest",
            "all-minilm:22m",
            "all-minilm:l6",
            "all-minilm:l6-v2",
            "all-minilm-l6-v2",
            "all-minilm-l6-v2:latest",
            "minilm",
        ),
        architecture="bert",
        dimension=384,
        pooling="mean",
        normalize=True,
        max_seq_length=256,
        licence="apache-2.0",
        size_mb=87,
    ),
    CatalogueEntry(
        hub_id="sentence-transformers/all-MiniLM-L12-v2",
        aliases=("all-minilm:33m", "all-minilm:l12", "all-minilm:l12-v2", "all-minilm-l12-v2"),
        architecture="bert",
        dimension=384,
        pooling="mean",
        normalize=True,
        max_seq_length=128,
        licence="apache-2.0",
        size_mb=127,
    ),
    CatalogueEntry(
        hub_id="sentence-transformers/multi-qa-MiniLM-L6-cos-v1",
        aliases=("multi-qa-minilm",),
        architecture="bert",
        dimension=384,
        pooling="mean",
        normalize=True,
        max_seq_length=512,
        licence="unspecified",
        size_mb=87,
    ),
    CatalogueEntry(
        hub_id="sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
        aliases=("paraphrase-multilingual-minilm",),
        architecture="xlm-roberta",
        dimension=384,
        pooling="mean",
        normalize=False,
        max_seq_length=128,
        licence="apache-2.0",
        size_mb=449,
    ),
    CatalogueEntry(
        hub_id="BAAI/bge-small-en-v1.5",
        aliases=("bge-small", "bge-small-en", "bge-small:latest"),
        architecture="bert",
        dimension=384,
        pooling="cls",
        normalize=True,
        max_seq_length=512,
        licence="mit",
        size_mb=127,
        prompts=_prompts({"query": _RETRIEVAL}),
    ),
    CatalogueEntry(
        hub_id="BAAI/bge-base-en-v1.5",
        aliases=("bge-base", "bge-base-en", "bge-base:latest"),
        architecture="bert",
        dimension=768,
        pooling="cls",
        normalize=True,
        max_seq_length=512,
        licence="mit",
        size_mb=418,
        prompts=_prompts({"query": _RETRIEVAL}),
    ),
    CatalogueEntry(
        hub_id="intfloat/e5-small-v2",
        aliases=("e5-small", "e5-small-v2:latest"),
        architecture="bert",
        dimension=384,
        pooling="mean",
        normalize=True,
        max_seq_length=512,
        licence="mit",
        size_mb=127,
        prompts=_prompts(_E5),
    ),
    CatalogueEntry(
        hub_id="intfloat/multilingual-e5-small",
        aliases=("multilingual-e5-small:latest",),
        architecture="xlm-roberta",
        dimension=384,
        pooling="mean",
        normalize=True,
        max_seq_length=512,
        licence="mit",
        size_mb=449,
        prompts=_prompts(_E5),
    ),
    CatalogueEntry(
        hub_id="intfloat/multilingual-e5-base",
        aliases=("multilingual-e5-base:latest",),
        architecture="xlm-roberta",
        dimension=768,
        pooling="mean",
        normalize=True,
        max_seq_length=512,
        licence="mit",
        size_mb=1061,
        prompts=_prompts(_E5),
    ),
    CatalogueEntry(
        hub_id="thenlper/gte-small",
        aliases=("gte-small:latest",),
        architecture="bert",
        dimension=384,
        pooling="mean",
        normalize=True,
        max_seq_length=512,
        licence="mit",
        size_mb=127,
    ),
    CatalogueEntry(
        hub_id="mixedbread-ai/mxbai-embed-large-v1",
        aliases=("mxbai-embed-large", "mxbai-embed-large:latest", "mxbai-embed-large:335m"),
        architecture="bert",
        dimension=1024,
        pooling="cls",
        normalize=False,
        max_seq_length=512,
        licence="apache-2.0",
        size_mb=1278,
        prompts=_prompts({"query": _RETRIEVAL}),
    ),
)


def _index() -> dict[str, CatalogueEntry]:
    table: dict[str, CatalogueEntry] = {}
    for entry in CATALOGUE:
        for name in (entry.hub_id, entry.short_name, *entry.aliases):
            key = name.lower()
            if key in table and table[key] is not entry:
                raise AssertionError(f"alias {name!r} names two catalogue models")
            table[key] = entry
    return table


_BY_NAME = _index()


def find_entry(spec: str | None) -> CatalogueEntry | None:
    """The catalogue entry a name (hub id, short name or alias, any case) means, if any."""
    if spec is None or not spec.strip():
        return _BY_NAME[DEFAULT_MODEL.lower()]
    return _BY_NAME.get(spec.strip().lower())


def canonical_name(spec: str | None) -> str:
    """None/empty → the default model; a known name → its hub id; anything else as given."""
    entry = find_entry(spec)
    if entry is not None:
        return entry.hub_id
    assert spec is not None
    return spec.strip()


def names_for(hub_id: str) -> tuple[str, ...]:
    """Every name a catalogue model answers to (hub id first); ``(hub_id,)`` if unknown."""
    entry = _BY_NAME.get(hub_id.lower())
    if entry is None:
        return (hub_id,)
    return (entry.hub_id, entry.short_name, *entry.aliases)
