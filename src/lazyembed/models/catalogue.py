"""The models lazyembed knows by name: hub ids, the aliases people type, and their facts.

This is the project's one alias table: the resolver, the server (`/api/tags`,
`/v1/models`, the ``model`` field of a request) and ``lazyembed models`` all read it.
The facts here (dimension, pooling, prompts, ...) describe the published model for
listings; what the encoder uses is always read from the model's own folder (`info.py`).
A fact that was not checked against the published files is None, never a guess.

How an entry runs (`run_status`): natively when lazyembed converts its ``model_type``
(`native_model_types`, the one place that says which), else through the ONNX export its
hub repo publishes (``onnx/model.onnx``) or a local folder holds, else not yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: Where sentence-transformers (and the hub) put a folder's ONNX export.
DEFAULT_EXPORT = "onnx/model.onnx"

Runs = Literal["native", "export", "not yet"]


@dataclass(frozen=True)
class CatalogueEntry:
    """One model as published on the hub."""

    hub_id: str
    aliases: tuple[str, ...]
    model_type: str  # config.json model_type: "bert", "xlm-roberta", "qwen3", ...
    dimension: int
    pooling: str  # "mean", "cls", "lasttoken"
    normalize: bool | None  # a Normalize module in modules.json; None: not checked
    max_seq_length: int
    licence: str
    size_mb: int | None  # the safetensors weights, fp32 (MiB); None: see parameters_m
    prompts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Parameters in millions, as the model card gives them; None: not checked.
    parameters_m: int | None = None
    #: Ollama's name for the model (also an alias), where Ollama has one.
    ollama: str | None = None
    #: Whether the hub repo publishes ``onnx/model.onnx``; None: not checked.
    onnx_export: bool | None = None
    #: Another hub repo that publishes an ONNX export of the model (onnx-community).
    export_elsewhere: str | None = None

    @property
    def short_name(self) -> str:
        return self.hub_id.rsplit("/", 1)[-1]

    @property
    def architecture(self) -> str:
        """The model type (the name the server's Ollama ``family`` field shows)."""
        return self.model_type


@dataclass(frozen=True)
class RunStatus:
    """How lazyembed runs a catalogue model, and why."""

    runs: Runs
    why: str


def native_model_types() -> frozenset[str]:
    """The config.json model types lazyembed converts itself (``architectures.py``)."""
    from lazyembed.models import architectures

    return architectures.native_model_types()


def run_status(entry: CatalogueEntry, *, local_export: bool = False) -> RunStatus:
    """Native, through its ONNX export, or not yet (with the reason).

    ``local_export``: the folder found on this machine holds ``onnx/model.onnx``.
    """
    kind = entry.model_type
    if kind in native_model_types():
        return RunStatus("native", f"lazyembed converts {kind} models (model.safetensors)")
    not_native = f"lazyembed does not convert {kind} models"
    if local_export:
        return RunStatus("export", f"{not_native}; runs the local folder's {DEFAULT_EXPORT}")
    if entry.onnx_export:
        return RunStatus("export", f"{not_native}; {entry.hub_id} publishes {DEFAULT_EXPORT}")
    if entry.onnx_export is None:
        why = f"{not_native}, and whether {entry.hub_id} publishes {DEFAULT_EXPORT} is not known"
    else:
        why = f"{not_native}, and {entry.hub_id} publishes no {DEFAULT_EXPORT}"
    if entry.export_elsewhere:
        why += f"; {entry.export_elsewhere} publishes an ONNX export: --model a download of it"
    return RunStatus("not yet", why)


_RETRIEVAL = "Represent this sentence for searching relevant passages: "
_E5 = {"query": "query: ", "passage": "passage: "}
_GEMMA_QUERY = "task: search result | query: "
_GEMMA_DOCUMENT = "title: none | text: "


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
        model_type="bert",
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
        model_type="bert",
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
        model_type="bert",
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
        model_type="xlm-roberta",
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
        model_type="bert",
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
        model_type="bert",
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
        model_type="bert",
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
        model_type="xlm-roberta",
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
        model_type="xlm-roberta",
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
        model_type="bert",
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
        model_type="bert",
        dimension=1024,
        pooling="cls",
        normalize=False,
        max_seq_length=512,
        licence="apache-2.0",
        size_mb=1278,
        prompts=_prompts({"query": _RETRIEVAL}),
    ),
    # ---- the models local tools use in 2026 (issue 21) ----
    CatalogueEntry(
        hub_id="nomic-ai/nomic-embed-text-v1.5",
        aliases=("nomic-embed-text:latest", "nomic-embed-text:v1.5"),
        ollama="nomic-embed-text",
        model_type="nomic_bert",
        dimension=768,
        pooling="mean",
        normalize=None,
        max_seq_length=8192,
        licence="apache-2.0",
        size_mb=None,
        parameters_m=137,
        prompts=_prompts(
            {
                "query": "search_query: ",
                "document": "search_document: ",
                "clustering": "clustering: ",
                "classification": "classification: ",
            }
        ),
        onnx_export=True,
    ),
    CatalogueEntry(
        hub_id="google/embeddinggemma-300m",
        aliases=("embeddinggemma:latest", "embeddinggemma:300m"),
        ollama="embeddinggemma",
        model_type="gemma3_text",
        dimension=768,
        pooling="mean",
        normalize=True,
        max_seq_length=2048,
        licence="gemma",
        size_mb=None,
        parameters_m=308,
        prompts=_prompts(
            {
                "query": _GEMMA_QUERY,
                "document": _GEMMA_DOCUMENT,
                "BitextMining": _GEMMA_QUERY,
                "Clustering": "task: clustering | query: ",
                "Classification": "task: classification | query: ",
                "InstructionRetrieval": "task: code retrieval | query: ",
                "MultilabelClassification": "task: classification | query: ",
                "PairClassification": "task: sentence similarity | query: ",
                "Reranking": _GEMMA_QUERY,
                "Retrieval": _GEMMA_QUERY,
                "Retrieval-query": _GEMMA_QUERY,
                "Retrieval-document": _GEMMA_DOCUMENT,
                "STS": "task: sentence similarity | query: ",
                "Summarization": "task: summarization | query: ",
            }
        ),
        onnx_export=False,
        export_elsewhere="onnx-community/embeddinggemma-300m-ONNX",
    ),
    CatalogueEntry(
        hub_id="Qwen/Qwen3-Embedding-0.6B",
        aliases=(),
        ollama="qwen3-embedding:0.6b",
        model_type="qwen3",
        dimension=1024,
        pooling="lasttoken",
        normalize=True,
        max_seq_length=32768,
        licence="apache-2.0",
        size_mb=None,
        parameters_m=600,
        prompts=_prompts(
            {
                "query": "Instruct: Given a web search query, retrieve relevant passages that "
                "answer the query\nQuery:",
                "document": "",
            }
        ),
        onnx_export=False,
        export_elsewhere="onnx-community/Qwen3-Embedding-0.6B-ONNX",
    ),
    CatalogueEntry(
        hub_id="sentence-transformers/all-mpnet-base-v2",
        aliases=(),
        model_type="mpnet",
        dimension=768,
        pooling="mean",
        normalize=True,
        max_seq_length=384,
        licence="apache-2.0",
        size_mb=None,
        parameters_m=109,
        onnx_export=True,
    ),
    CatalogueEntry(
        hub_id="Alibaba-NLP/gte-modernbert-base",
        aliases=(),
        model_type="modernbert",
        dimension=768,
        pooling="cls",
        normalize=None,
        max_seq_length=8192,
        licence="apache-2.0",
        size_mb=None,
        parameters_m=149,
        onnx_export=True,
    ),
    CatalogueEntry(
        hub_id="Snowflake/snowflake-arctic-embed-s",
        aliases=(),
        ollama="snowflake-arctic-embed:33m",
        model_type="bert",
        dimension=384,
        pooling="cls",
        normalize=None,
        max_seq_length=512,
        licence="apache-2.0",
        size_mb=None,
        parameters_m=33,
        prompts=_prompts({"query": _RETRIEVAL}),
    ),
    CatalogueEntry(
        hub_id="Snowflake/snowflake-arctic-embed-m",
        aliases=(),
        ollama="snowflake-arctic-embed:110m",
        model_type="bert",
        dimension=768,
        pooling="cls",
        normalize=None,
        max_seq_length=512,
        licence="apache-2.0",
        size_mb=None,
        parameters_m=110,
        prompts=_prompts({"query": _RETRIEVAL}),
    ),
    CatalogueEntry(
        hub_id="Snowflake/snowflake-arctic-embed-l",
        aliases=("snowflake-arctic-embed", "snowflake-arctic-embed:latest"),
        ollama="snowflake-arctic-embed:335m",
        model_type="bert",
        dimension=1024,
        pooling="cls",
        normalize=None,
        max_seq_length=512,
        licence="apache-2.0",
        size_mb=None,
        parameters_m=335,
        prompts=_prompts({"query": _RETRIEVAL}),
    ),
    CatalogueEntry(
        hub_id="Snowflake/snowflake-arctic-embed-l-v2.0",
        aliases=("snowflake-arctic-embed2:latest", "snowflake-arctic-embed2:568m"),
        ollama="snowflake-arctic-embed2",
        model_type="xlm-roberta",
        dimension=1024,
        pooling="cls",
        normalize=None,
        max_seq_length=8192,
        licence="apache-2.0",
        size_mb=None,
        parameters_m=568,
        prompts=_prompts({"query": "query: "}),
    ),
    CatalogueEntry(
        hub_id="BAAI/bge-m3",
        aliases=("bge-m3:latest", "bge-m3:567m"),
        ollama="bge-m3",
        model_type="xlm-roberta",
        dimension=1024,
        pooling="cls",
        normalize=True,
        max_seq_length=8192,
        licence="mit",
        size_mb=None,
        parameters_m=568,
    ),
    CatalogueEntry(
        hub_id="intfloat/multilingual-e5-large",
        aliases=("multilingual-e5-large:latest",),
        model_type="xlm-roberta",
        dimension=1024,
        pooling="mean",
        normalize=True,
        max_seq_length=512,
        licence="mit",
        size_mb=None,
        parameters_m=560,
        prompts=_prompts(_E5),
    ),
    CatalogueEntry(
        hub_id="ibm-granite/granite-embedding-small-english-r2",
        aliases=(),
        model_type="modernbert",
        dimension=384,
        pooling="cls",
        normalize=None,
        max_seq_length=8192,
        licence="apache-2.0",
        size_mb=None,
        parameters_m=47,
    ),
)


def names_of(entry: CatalogueEntry) -> tuple[str, ...]:
    """Every name of one entry: hub id, short name, Ollama's name, aliases (no repeats)."""
    names = (entry.hub_id, entry.short_name, *((entry.ollama,) if entry.ollama else ()))
    return tuple(dict.fromkeys((*names, *entry.aliases)))


def _index() -> dict[str, CatalogueEntry]:
    table: dict[str, CatalogueEntry] = {}
    for entry in CATALOGUE:
        for name in names_of(entry):
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
    return names_of(entry)
