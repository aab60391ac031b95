"""`Embedder.encode`: sentence-transformers' call and return shapes, without torch."""

from __future__ import annotations

import inspect
import sys

import numpy as np
import pytest

from lazyembed import Embedder
from lazyembed.errors import InputTypeError, InvalidInputError

TEXTS = ["the first sentence", "a second one", "and a third"]


def test_return_shapes_match_sentence_transformers(shared_embedder: Embedder) -> None:
    expected = shared_embedder.embed_numpy(TEXTS)
    one = shared_embedder.encode(TEXTS[0])
    assert isinstance(one, np.ndarray) and one.shape == (384,) and one.dtype == np.float32
    assert np.array_equal(one, expected[0])
    many = shared_embedder.encode(TEXTS, batch_size=2, show_progress_bar=False)
    assert isinstance(many, np.ndarray) and many.shape == (3, 384)
    assert np.array_equal(many, expected)
    rows = shared_embedder.encode(TEXTS, convert_to_numpy=False)
    assert isinstance(rows, list) and [r.shape for r in rows] == [(384,)] * 3
    assert np.array_equal(np.stack(rows), expected)
    single = shared_embedder.encode(TEXTS[1], convert_to_numpy=False)
    assert isinstance(single, np.ndarray) and np.array_equal(single, expected[1])
    assert shared_embedder.encode(iter(TEXTS)).shape == (3, 384)


def test_nothing_in_nothing_out(shared_embedder: Embedder) -> None:
    empty = shared_embedder.encode([])
    assert isinstance(empty, np.ndarray) and empty.shape == (0, 384)
    assert shared_embedder.encode([], convert_to_numpy=False) == []


def test_normalize_embeddings_l2_normalises(shared_embedder: Embedder) -> None:
    raw = shared_embedder.encode(TEXTS, normalize_embeddings=False)
    assert isinstance(raw, np.ndarray)
    unit = shared_embedder.encode(TEXTS, normalize_embeddings=True)
    assert isinstance(unit, np.ndarray) and unit.dtype == np.float32
    assert np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-6)
    assert np.allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-7)


def test_normalize_embeddings_scales_a_non_unit_model(
    shared_embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = shared_embedder.embed_numpy(TEXTS)
    monkeypatch.setattr(shared_embedder, "embed_numpy", lambda texts, **kw: plain * 3)
    unit = shared_embedder.encode(TEXTS, normalize_embeddings=True)
    assert np.allclose(unit, plain, atol=1e-6)
    assert np.allclose(shared_embedder.encode(TEXTS), plain * 3)  # None: as the model gives


def test_tensors_are_refused_without_importing_torch(
    shared_embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` would now fail
    with pytest.raises(InvalidInputError, match="torch"):
        shared_embedder.encode(TEXTS, convert_to_tensor=True)


def test_keywords(shared_embedder: Embedder) -> None:
    assert shared_embedder.encode("cpu is fine", device="cpu").shape == (384,)
    with pytest.raises(InvalidInputError, match="CPU only"):
        shared_embedder.encode("x", device="cuda")
    with pytest.raises(InvalidInputError, match="precision"):
        shared_embedder.encode("x", precision="int8")
    with pytest.raises(InputTypeError):
        shared_embedder.encode(None)  # type: ignore[arg-type]


def test_keep_alive_reaches_the_model_call() -> None:
    embedder = Embedder(cache_memory_mb=0, idle_timeout="never")
    try:
        embedder.encode(TEXTS, keep_alive=0)
        assert not embedder.is_loaded  # keep_alive=0: unloaded right after the call
    finally:
        embedder.close()


def test_prompts_pass_through_or_are_refused_clearly(shared_embedder: Embedder) -> None:
    if "prompt_name" in inspect.signature(shared_embedder.embed_numpy).parameters:
        got = shared_embedder.encode(TEXTS, prompt="query: ")
        expected = shared_embedder.embed_numpy(TEXTS, prompt="query: ")  # type: ignore[call-arg,unused-ignore]
        assert np.array_equal(got, expected)
    else:
        with pytest.raises(InvalidInputError, match="prompt"):
            shared_embedder.encode(TEXTS, prompt_name="query")
        with pytest.raises(InvalidInputError, match="prompt"):
            shared_embedder.encode(TEXTS, prompt="query: ")
