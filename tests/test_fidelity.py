"""lazyembed must give sentence-transformers' vectors for all-MiniLM-L6-v2.

The reference vectors were made once by tools/make_reference.py (torch, never in CI) and
are checked in under tests/fixtures/. Each case group is embedded in its own call as well
as all together, so a failure names the kind of text that broke (truncation, Unicode
normalisation, empty input) and batch composition (padding) is exercised twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from lazyembed import Embedder

FIXTURES = Path(__file__).parent / "fixtures"
MIN_COSINE = 0.99999
DIM = 384

# Case group → the case labels in reference_corpus.json that belong to it.
GROUPS: dict[str, tuple[str, ...]] = {
    "long": ("long", "boundary-255", "boundary-256", "boundary-257"),
    "non-ascii": ("non-ascii",),
    "emoji": ("emoji",),
    "whitespace": ("empty", "whitespace", "control"),
    "odd-short": ("single-word", "mixed-case", "punctuation"),
}

Vectors = npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], list[str], Vectors]:
    corpus = json.loads((FIXTURES / "reference_corpus.json").read_text(encoding="utf-8"))
    vectors = np.load(FIXTURES / "reference_vectors.npy")
    return corpus["texts"], corpus["cases"], vectors


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def _cosines(got: Vectors, want: Vectors) -> Vectors:
    # Both sides are unit vectors, so the row-wise dot product is the cosine; dividing by
    # the norms anyway keeps a normalisation bug from hiding behind it.
    dots = np.einsum("ij,ij->i", got.astype(np.float64), want.astype(np.float64))
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    cosines: Vectors = (dots / norms).astype(np.float32)
    return cosines


def _check(texts: list[str], cases: list[str], got: Vectors, want: Vectors) -> None:
    assert got.dtype == np.float32
    assert got.shape == (len(texts), DIM)
    assert np.isfinite(got).all(), "NaN or inf in the vectors"
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosines = _cosines(got, want)
    worst = int(np.argmin(cosines))
    failing = [
        f"{cases[i]} #{i} cos={cosines[i]:.7f} text={texts[i][:60]!r}"
        for i in np.flatnonzero(cosines < MIN_COSINE)
    ]
    assert not failing, (
        f"{len(failing)} of {len(texts)} below {MIN_COSINE} (min {cosines[worst]:.7f}):\n"
        + "\n".join(failing[:20])
    )


def test_fixtures_are_consistent(reference: tuple[list[str], list[str], Vectors]) -> None:
    texts, cases, vectors = reference
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(texts), DIM) == (len(cases), DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    labels = set(cases)
    for group, members in GROUPS.items():
        assert labels & set(members), f"fixture has no {group} texts"


def test_every_text_matches_sentence_transformers(
    embedder: Embedder, reference: tuple[list[str], list[str], Vectors]
) -> None:
    texts, cases, vectors = reference
    _check(texts, cases, embedder.embed_numpy(texts), vectors)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_case_group_matches_sentence_transformers(
    group: str, embedder: Embedder, reference: tuple[list[str], list[str], Vectors]
) -> None:
    texts, cases, vectors = reference
    picked = [i for i, case in enumerate(cases) if case in GROUPS[group]]
    got = embedder.embed_numpy([texts[i] for i in picked])
    _check([texts[i] for i in picked], [cases[i] for i in picked], got, vectors[picked])


def test_one_text_at_a_time_matches_the_batch(
    embedder: Embedder, reference: tuple[list[str], list[str], Vectors]
) -> None:
    """Batch of one (no padding) against the reference, for one text of each case."""
    texts, cases, vectors = reference
    firsts = sorted({case: i for i, case in reversed(list(enumerate(cases)))}.values())
    got = np.concatenate([embedder.embed_numpy([texts[i]]) for i in firsts])
    _check([texts[i] for i in firsts], [cases[i] for i in firsts], got, vectors[firsts])
