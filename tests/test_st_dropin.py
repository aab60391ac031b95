"""The sentence-transformers drop-in names, against sentence-transformers' own answers.

tests/fixtures/st_dropin.npz/.json come from tools/make_st_dropin_reference.py
(sentence-transformers with torch, never in CI) for the default model; the prompt
fixtures' sentence-transformers vectors are in their reference.json.
"""

from __future__ import annotations

import enum
import inspect
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from lazyembed import Embedder
from lazyembed.config import KeepAliveLike
from lazyembed.errors import (
    InputTypeError,
    InvalidInputError,
    LazyEmbedError,
    UnsupportedOptionError,
)
from lazyembed.models.info import ModelInfo, read_model_info
from lazyembed.models.prompts import Prompts, read_prompts
from lazyembed.quantization import quantize_embeddings
from lazyembed.runtime import load_tokenizer
from lazyembed.similarity import similarity, similarity_pairwise
from lazyembed.st_dropin import SentenceTransformerMethods

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = FIXTURES / "models"
META: dict[str, Any] = json.loads((FIXTURES / "st_dropin.json").read_text(encoding="utf-8"))
FUNCTIONS = ("cosine", "dot", "euclidean", "manhattan")
PRECISIONS = ("int8", "uint8", "binary", "ubinary")
#: sentence-transformers 6's encode/encode_query/encode_document, in positional order.
ST_ENCODE_PARAMETERS = [
    "inputs",
    "prompt_name",
    "prompt",
    "batch_size",
    "show_progress_bar",
    "output_value",
    "precision",
    "convert_to_numpy",
    "convert_to_tensor",
    "device",
    "normalize_embeddings",
    "truncate_dim",
    "pool",
    "chunk_size",
    "kwargs",
]


@pytest.fixture(scope="module")
def ref() -> Iterator[dict[str, npt.NDArray[Any]]]:
    with np.load(FIXTURES / "st_dropin.npz") as data:
        yield {key: data[key] for key in data.files}


@pytest.fixture
def embedder(shared_embedder: Embedder) -> Iterator[Embedder]:
    """The shared Embedder, its similarity function back to the model's afterwards."""
    yield shared_embedder
    shared_embedder._similarity_fn_override = None


class Host(SentenceTransformerMethods):
    """The smallest host of the mixin: a model folder's info, tokenizer and prompts, and
    vectors from a plain function (no Embedder, no ONNX Runtime)."""

    def __init__(self, folder: Path) -> None:
        self.info = read_model_info(folder, any_architecture=True)  # exports too
        self.folder = folder
        self.calls: list[tuple[list[str], str | None, str | None]] = []

    def embed_numpy(
        self,
        texts: str | Iterable[str],
        *,
        keep_alive: KeepAliveLike = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> npt.NDArray[np.float32]:
        items = [texts] if isinstance(texts, str) else list(texts)
        self.calls.append((items, prompt_name, prompt))
        rows = [[len(item), 1.0, -2.0] for item in items]
        return np.asarray(rows, dtype=np.float32)

    @property
    def prompts(self) -> Prompts:
        return read_prompts(self.folder)

    def _dropin_info(self) -> ModelInfo:
        return self.info

    def _dropin_tokenizer(self) -> Any:
        return load_tokenizer(str(self.folder / "tokenizer.json"), self.info.max_seq_length)


# ---- similarity -------------------------------------------------------------------------


@pytest.mark.parametrize("name", FUNCTIONS)
def test_similarity_functions_match_sentence_transformers(
    name: str, ref: dict[str, npt.NDArray[Any]]
) -> None:
    query, document = ref["query"], ref["document"]
    matrix = similarity(name, query, document)
    assert matrix.shape == (len(query), len(document)) and matrix.dtype == np.float32
    assert np.allclose(matrix, ref[f"similarity_{name}"], rtol=2e-6, atol=1e-6)
    one = similarity(name, query[0], list(document))  # one vector, and a list of vectors
    assert one.shape == (1, len(document))
    assert np.allclose(one, ref[f"similarity_{name}_1d"], rtol=2e-6, atol=1e-6)
    pairs = similarity_pairwise(name, query, document[:3])
    assert pairs.shape == (3,)
    assert np.allclose(pairs, ref[f"pairwise_{name}"], rtol=2e-6, atol=1e-6)
    assert similarity_pairwise(name, query[0], document[0]).shape == ()
    assert similarity(name, query.astype(np.float64), document).dtype == np.float64


def test_similarity_of_encoded_texts_matches(embedder: Embedder, ref: dict[str, Any]) -> None:
    assert embedder.similarity_fn_name == META["similarity_fn_name"] == "cosine"
    queries = embedder.encode(META["queries"])
    documents = embedder.encode(META["documents"])
    assert np.allclose(embedder.similarity(queries, documents), ref["similarity_cosine"], atol=1e-5)
    embedder.similarity_fn_name = "manhattan"
    scores = embedder.similarity_pairwise(queries, documents[:3])
    assert np.allclose(scores, ref["pairwise_manhattan"], rtol=1e-5)


def test_similarity_fn_name_is_settable_as_in_sentence_transformers(embedder: Embedder) -> None:
    a = np.array([[3.0, 4.0]], dtype=np.float32)
    embedder.similarity_fn_name = "dot"
    assert embedder.similarity(a, a).tolist() == [[25.0]]

    class SimilarityFunction(enum.Enum):  # sentence-transformers' enum, by its value
        EUCLIDEAN = "euclidean"

    embedder.similarity_fn_name = SimilarityFunction.EUCLIDEAN
    assert embedder.similarity_fn_name == "euclidean"
    assert embedder.similarity(a, a * 0).tolist() == [[-5.0]]
    embedder.similarity_fn_name = None  # as sentence-transformers: back to cosine
    assert embedder.similarity(a, a).tolist() == [[pytest.approx(1.0)]]
    with pytest.raises(InvalidInputError, match="maxsim"):
        embedder.similarity_fn_name = "maxsim"
    assert embedder.similarity_fn_name == "cosine"


def test_similarity_refuses_bad_input(embedder: Embedder) -> None:
    with pytest.raises(InvalidInputError, match="dimensions"):
        embedder.similarity(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(InvalidInputError, match="as many"):
        embedder.similarity_pairwise(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(InvalidInputError, match="differ in length"):
        embedder.similarity([[1.0, 2.0], [1.0]], np.ones((1, 2)))
    with pytest.raises(InputTypeError, match="numbers"):
        embedder.similarity([["a", "b"]], np.ones((1, 2)))
    with pytest.raises(InvalidInputError):
        embedder.similarity(np.ones((1, 2, 3)), np.ones((1, 3)))


def test_similarity_fn_name_comes_from_the_model(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(MODELS / "bert-mean-norm", folder)
    config_file = folder / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text())
    config["similarity_fn_name"] = "dot"
    config_file.write_text(json.dumps(config))
    embedder = Embedder(str(folder), cache_memory_mb=0, idle_timeout="never")
    try:
        assert embedder.similarity_fn_name == "dot"
        a = np.array([[1.0, 2.0]], dtype=np.float32)
        assert embedder.similarity(a, a * 2).tolist() == [[10.0]]
        assert not embedder.is_loaded  # knowing the function needs no model
    finally:
        embedder.close()
    config["similarity_fn_name"] = "maxsim"
    config_file.write_text(json.dumps(config))
    with pytest.raises(UnsupportedOptionError, match="maxsim"):
        _ = Host(folder).similarity_fn_name


# ---- encode options -----------------------------------------------------------------------


def test_encode_signatures_are_sentence_transformers(embedder: Embedder) -> None:
    for method in (embedder.encode, embedder.encode_query, embedder.encode_document):
        assert list(inspect.signature(method).parameters) == ST_ENCODE_PARAMETERS
    texts = META["documents"]
    plain = embedder.encode(texts)
    assert np.array_equal(embedder.encode(texts, None, None, 2, False), plain)  # positional
    assert np.array_equal(embedder.encode(sentences=texts), plain)  # before version 6
    with pytest.raises(InputTypeError, match="both"):
        embedder.encode(texts, sentences=texts)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_quantization_is_sentence_transformers_bit_for_bit(
    precision: str, ref: dict[str, npt.NDArray[Any]]
) -> None:
    floats = np.concatenate([ref["document"], ref["query"]])
    got = quantize_embeddings(floats, precision)
    want = ref[f"quantize_{precision}"]
    assert got.dtype == want.dtype and np.array_equal(got, want)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_encode_precision_matches_sentence_transformers(
    precision: str, embedder: Embedder, ref: dict[str, npt.NDArray[Any]]
) -> None:
    got = embedder.encode(META["documents"] + META["queries"], precision=precision)
    want = ref[f"encode_{precision}"]
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype and got.shape == want.shape
    if precision.endswith("int8"):  # float vectors ~1e-7 apart: a bucket edge may differ
        assert np.abs(got.astype(np.int16) - want.astype(np.int16)).max() <= 1
        assert np.mean(got == want) > 0.95
    else:
        flipped = np.unpackbits(got.view(np.uint8) ^ want.view(np.uint8)).sum()
        assert flipped <= 2  # only a dimension within ~1e-7 of zero could flip
    assert embedder.encode("one text", precision="ubinary").shape == (48,)
    assert embedder.encode([], precision=precision).shape == want[:0].shape


def test_int8_needs_two_texts_as_in_sentence_transformers(embedder: Embedder) -> None:
    with pytest.raises(InvalidInputError, match="precision='int8'"):
        embedder.encode("one text has no range", precision="int8")
    assert embedder.encode("x", precision="float32").dtype == np.float32
    assert embedder.encode("x", precision=None).dtype == np.float32  # type: ignore[call-overload]
    with pytest.raises(InvalidInputError, match="'float16'"):
        embedder.encode("x", precision="float16")


def test_truncate_dim_then_normalize(embedder: Embedder, ref: dict[str, Any]) -> None:
    got = embedder.encode(META["documents"], truncate_dim=64, normalize_embeddings=True)
    assert isinstance(got, np.ndarray) and got.shape == (4, 64) and got.dtype == np.float32
    assert np.allclose(got, ref["truncated_normalized"], atol=1e-6)
    assert embedder.encode([], truncate_dim=64).shape == (0, 64)
    with pytest.raises(InvalidInputError, match="truncate_dim"):
        embedder.encode("x", truncate_dim=0)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"output_value": "token_embeddings"}, "token_embeddings"),
        ({"output_value": None}, "None"),
        ({"convert_to_tensor": True}, "torch"),
        ({"device": "cuda"}, "cuda"),
        ({"pool": {"processes": []}}, "pool"),
        ({"processing_kwargs": {}}, "processing_kwargs"),
    ],
)
def test_unsupported_options_are_refused_by_name(
    embedder: Embedder, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(UnsupportedOptionError, match=named):
        embedder.encode(["x", "y"], **options)
    with pytest.raises(UnsupportedOptionError, match=named):
        embedder.encode_query("x", **options)


def test_batch_size_is_checked_as_in_sentence_transformers(embedder: Embedder) -> None:
    assert embedder.encode(["a", "b", "c"], batch_size=1).shape == (3, 384)
    for bad in (0, -1):
        with pytest.raises(InvalidInputError, match="positive"):
            embedder.encode("x", batch_size=bad)
    with pytest.raises(InputTypeError, match="batch_size"):
        embedder.encode("x", batch_size="8")  # type: ignore[call-overload]
    # sentence-transformers' own keywords that change nothing here
    assert embedder.encode("x", task="query", chunk_size=4).shape == (384,)


# ---- encode_query / encode_document -----------------------------------------------------


def test_encode_query_and_document_on_the_default_model(
    embedder: Embedder, ref: dict[str, Any]
) -> None:
    assert np.allclose(embedder.encode_query(META["queries"]), ref["encode_query"], atol=1e-6)
    assert np.allclose(
        embedder.encode_document(META["documents"]), ref["encode_document"], atol=1e-6
    )
    got = embedder.encode_query(META["queries"], prompt="query: ")
    assert np.allclose(got, ref["encode_prompt"], atol=1e-6)
    assert embedder.encode_document("one document").shape == (384,)


def test_encode_query_and_document_pick_the_models_prompts() -> None:
    reference = json.loads((MODELS / "bert-default-prompt" / "reference.json").read_text())
    texts = reference["texts"]
    embedder = Embedder(str(MODELS / "bert-default-prompt"), cache_memory_mb=0)
    try:
        for role, got in (
            ("query", embedder.encode_query(texts)),
            ("document", embedder.encode_document(texts)),
            ("query", embedder.encode(texts)),  # the model's default_prompt_name
            ("document", embedder.encode_query(texts, prompt_name="document")),
            ("document", embedder.encode_query(texts, prompt="passage: ")),
        ):
            want = np.asarray(reference["prompt_vectors"][role], dtype=np.float32)
            assert np.allclose(got, want, atol=1e-5), role
    finally:
        embedder.close()


def test_the_mixin_needs_only_its_hooks() -> None:
    host = Host(MODELS / "bert-classic-prompts")  # prompts query/document, no default
    assert host.encode_query("q").tolist() == [1.0, 1.0, -2.0]
    assert host.encode_document(["d", "dd"], normalize_embeddings=True).shape == (2, 3)
    host.encode(["e"])
    assert [(name, prompt) for _, name, prompt in host.calls] == [
        ("query", None),
        ("document", None),
        (None, None),
    ]
    assert host.similarity_fn_name == "cosine"
    assert host.get_sentence_embedding_dimension() == host.info.dimension


# ---- model facts and tokenize -------------------------------------------------------------


def test_dimension_and_max_seq_length(embedder: Embedder) -> None:
    assert embedder.get_sentence_embedding_dimension() == META["embedding_dimension"]
    assert embedder.get_embedding_dimension() == META["embedding_dimension"]
    assert embedder.max_seq_length == embedder.get_max_seq_length() == META["max_seq_length"]
    with pytest.raises(UnsupportedOptionError, match="read-only") as caught:
        embedder.max_seq_length = 512
    assert isinstance(caught.value, LazyEmbedError)
    assert embedder.max_seq_length == 256


def test_tokenize_matches_sentence_transformers(
    embedder: Embedder, ref: dict[str, npt.NDArray[Any]]
) -> None:
    tokens = embedder.tokenize(META["tokenize_texts"])
    assert list(tokens) == META["tokenize_keys"]
    for key, got in tokens.items():
        assert got.dtype == np.int64 and np.array_equal(got, ref[f"tokenize_{key}"]), key
    assert embedder.tokenize([]) == {}
    with pytest.raises(InputTypeError, match="list"):
        embedder.tokenize("a bare str")
    with pytest.raises(UnsupportedOptionError):
        embedder.tokenize(["x"], padding="max_length")


#: Per architecture: the keys Hugging Face's tokenizer returns and its pad token id, as
#: sentence-transformers' tokenize gives them for the fixture models.
TOKENIZER_OUTPUT = {
    "bert": ["input_ids", "token_type_ids", "attention_mask"],
    "xlm-roberta": ["input_ids", "attention_mask"],
    "mpnet": ["input_ids", "attention_mask"],
    "qwen3": ["input_ids", "attention_mask"],
    "nomic_bert": ["input_ids", "attention_mask"],
    "modernbert": ["input_ids", "attention_mask"],
    "gemma3_text": ["input_ids", "attention_mask"],
}
FIXTURE_NAMES = [
    entry["path"] for entry in json.loads((MODELS / "manifest.json").read_text())["fixtures"]
]


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_tokenize_every_fixture_model(name: str) -> None:
    """sentence-transformers' ids (reference.json; lowercasing, truncation, XLM-R
    included), padded as its tokenizer pads, with its keys."""
    folder = MODELS / name
    reference = json.loads((folder / "reference.json").read_text())
    host = Host(folder)
    keys, pad = TOKENIZER_OUTPUT[host.info.encoder.model_type], host.info.encoder.pad_token_id
    # The reference ids are of what encode() tokenized: the default prompt, if any, first.
    prompt = reference["prompts"].get(reference["default_prompt_name"] or "", "")
    tokens = host.tokenize([prompt + text for text in reference["texts"]])
    assert list(tokens) == keys
    mask = tokens["attention_mask"]
    assert mask.shape[1] == max(len(ids) for ids in reference["input_ids"])
    left = host.info.padding_side == "left"  # Qwen3-Embedding pads on the left
    for row, want in enumerate(reference["input_ids"]):
        length = int(mask[row].sum())
        kept = slice(mask.shape[1] - length, None) if left else slice(0, length)
        padding = slice(0, mask.shape[1] - length) if left else slice(length, None)
        assert tokens["input_ids"][row, kept].tolist() == want, row
        assert set(tokens["input_ids"][row, padding].tolist()) <= {pad}
        assert mask[row, kept].all()
