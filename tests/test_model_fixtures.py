"""Every supported model shape end to end, against sentence-transformers' own vectors.

The folders under tests/fixtures/models (built by tools/make_model_fixtures.py, never in
CI) are tiny random-weight BERT and XLM-RoBERTa sentence-transformers models in both
on-disk layouts, with the vectors sentence-transformers gave for 36 texts (empty,
whitespace, non-ASCII, past max_seq_length). Here they go through the whole lazyembed
path: resolve, convert, tokenizer, ONNX Runtime, pooling, normalisation, prompts. One
XLM-R model comes with one hub tokenizer.json (bare Metaspace) under two tokenizer classes,
XLMRobertaTokenizerFast and TokenizersBackend, which transformers 5 tokenizes differently.
Fixtures of architectures lazyembed does not convert yet (safetensors only, ``"native":
"pending"`` in the manifest) are checked for their token ids and for being refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from lazyembed import Embedder
from lazyembed.errors import UnsupportedModelError
from lazyembed.runtime import encode_truncated, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "models"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
NAMES = [fixture["path"] for fixture in MANIFEST["fixtures"]]
#: Safetensors-only fixtures whose converter has not landed: refused until the manifest says
#: otherwise (tools/make_model_fixtures.py's NATIVE lists the converted architectures).
PENDING = [
    fixture["path"] for fixture in MANIFEST["fixtures"] if fixture.get("native") == "pending"
]
RUNNABLE = [name for name in NAMES if name not in PENDING]
MIN_COSINE = 0.99999


def reference(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name / "reference.json").read_text())
    return data


@pytest.fixture(scope="module", params=RUNNABLE)
def fixture(request: pytest.FixtureRequest) -> Iterator[tuple[Embedder, dict[str, Any]]]:
    embedder = Embedder(str(FIXTURES / request.param), cache_memory_mb=0, idle_timeout="never")
    yield embedder, reference(request.param)
    embedder.close()


def check_close(got: npt.NDArray[np.float32], want: npt.NDArray[np.float32], what: str) -> None:
    """Cosine ≥ MIN_COSINE per row and, for vectors that are not normalised, equal norms."""
    assert got.shape == want.shape, what
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    norms = np.linalg.norm(got64, axis=1) * np.linalg.norm(want64, axis=1)
    cosine = (got64 * want64).sum(axis=1) / np.maximum(norms, 1e-30)
    worst = int(np.argmin(cosine))
    assert cosine.min() >= MIN_COSINE, f"{what}: text {worst} cosine {cosine[worst]:.7f}"
    assert np.allclose(
        np.linalg.norm(got64, axis=1), np.linalg.norm(want64, axis=1), rtol=1e-4, atol=1e-6
    ), f"{what}: norms differ"


def test_vectors_match_sentence_transformers(fixture: tuple[Embedder, dict[str, Any]]) -> None:
    embedder, ref = fixture
    got = embedder.embed_numpy(ref["texts"])
    check_close(got, np.asarray(ref["vectors"], dtype=np.float32), ref["name"])
    assert embedder.get_embedding_dimension() == ref["dimension"]
    assert embedder.get_max_tokens() == ref["max_seq_length"]


def test_prompts_match_sentence_transformers(fixture: tuple[Embedder, dict[str, Any]]) -> None:
    embedder, ref = fixture
    if "prompt_vectors" not in ref:
        pytest.skip("this fixture has no prompts")
    for name, vectors in ref["prompt_vectors"].items():
        got = embedder.embed_numpy(ref["texts"], prompt_name=name)
        check_close(got, np.asarray(vectors, dtype=np.float32), f"{ref['name']} {name}")


@pytest.mark.parametrize("name", NAMES)
def test_token_ids_match_sentence_transformers(name: str) -> None:
    """The ids sentence-transformers fed its model, text by text: whitespace-only text and
    leading or trailing spaces too, which hub XLM-R tokenizer.json files alone get wrong
    for XLMRobertaTokenizer and right for TokenizersBackend."""
    ref = reference(name)
    tokenizer = load_tokenizer(str(FIXTURES / name / "tokenizer.json"), ref["max_seq_length"])
    prompt = ref["prompts"].get(ref["default_prompt_name"] or "", "")
    texts = [prompt + text for text in ref["texts"]]
    if ref["do_lower_case"]:
        texts = [text.lower() for text in texts]
    got = [encoding.ids for encoding in encode_truncated(tokenizer, texts)]
    differ = [i for i, (a, b) in enumerate(zip(got, ref["input_ids"], strict=True)) if a != b]
    assert differ == [], f"{name}: other token ids than sentence-transformers' for texts {differ}"


@pytest.mark.parametrize("name", PENDING)
def test_pending_architectures_are_refused_not_run(name: str) -> None:
    """A fixture whose architecture has no converter yet gets UnsupportedModelError, never
    vectors; once its converter lands, its manifest entry loses "native": "pending"."""
    embedder = Embedder(str(FIXTURES / name), cache_memory_mb=0, idle_timeout="never")
    try:
        with pytest.raises(UnsupportedModelError, match=reference(name)["architecture"]):
            embedder.embed_numpy(["a text"])
    finally:
        embedder.close()
