"""Every supported model shape end to end, against sentence-transformers' own vectors.

The folders under tests/fixtures/models (built by tools/make_model_fixtures.py, never in
CI) are tiny random-weight BERT and XLM-RoBERTa sentence-transformers models in both
on-disk layouts, with the vectors sentence-transformers gave for 36 texts (empty,
whitespace, non-ASCII, past max_seq_length). Here they go through the whole lazyembed
path: resolve, convert, tokenizer, ONNX Runtime, pooling, normalisation, prompts.
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

FIXTURES = Path(__file__).parent / "fixtures" / "models"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
NAMES = [fixture["path"] for fixture in MANIFEST["fixtures"]]
MIN_COSINE = 0.99999


def reference(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name / "reference.json").read_text())
    return data


@pytest.fixture(scope="module", params=NAMES)
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
