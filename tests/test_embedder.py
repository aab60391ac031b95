"""The public API on the real model and real ONNX Runtime."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest

import lazyembed
from lazyembed import Embedder
from lazyembed.errors import ClosedError, ConfigError, InputTypeError, InvalidInputError

SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply on Monday.",
]


@pytest.fixture
def embedder() -> Iterator[Embedder]:
    e = Embedder(idle_timeout="never")
    yield e
    e.close()


def test_single_text_gives_384_unit_floats(shared_embedder: Embedder) -> None:
    vector = shared_embedder.embed("hello world")
    assert isinstance(vector, list) and len(vector) == 384
    assert all(isinstance(x, float) for x in vector)
    assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-5)


def test_list_and_numpy_agree(shared_embedder: Embedder) -> None:
    vectors = shared_embedder.embed(SENTENCES)
    array = shared_embedder.embed_numpy(SENTENCES)
    assert array.dtype == np.float32 and array.shape == (3, 384)
    assert np.array_equal(np.asarray(vectors, dtype=np.float32), array)


def test_meaning_shows_in_similarity(shared_embedder: Embedder) -> None:
    a, b, c = shared_embedder.embed_numpy(SENTENCES)
    assert float(a @ b) > float(a @ c) + 0.3


def test_batching_and_order_do_not_change_vectors(model_dir: object) -> None:
    texts = [f"sentence number {i} " + "word " * (i % 17) for i in range(70)]
    small = Embedder(batch_size=4, cache_memory_mb=0, idle_timeout="never")
    large = Embedder(batch_size=64, cache_memory_mb=0, idle_timeout="never")
    try:
        a = small.embed_numpy(texts)
        b = large.embed_numpy(texts)
        one_by_one = np.stack([large.embed_numpy([t])[0] for t in texts[:10]])
    finally:
        small.close()
        large.close()
    assert np.abs(a - b).max() < 1e-5
    assert np.abs(one_by_one - b[:10]).max() < 1e-5


def test_empty_and_whitespace_text_embed_as_cls_sep(shared_embedder: Embedder) -> None:
    empty, spaces, tabs = shared_embedder.embed_numpy(["", "   ", "\n\t "])
    assert np.isfinite(empty).all()
    assert math.isclose(float(np.linalg.norm(empty)), 1.0, rel_tol=1e-5)
    assert np.array_equal(empty, spaces) and np.array_equal(empty, tabs)


def test_long_text_is_truncated_at_max_seq_length(shared_embedder: Embedder) -> None:
    base = "alpha beta gamma delta " * 100
    assert shared_embedder.count_tokens([base]) == [256]
    a, b = shared_embedder.embed_numpy([base, base + " and a different ending entirely"])
    assert np.array_equal(a, b)  # the tail beyond 256 word pieces is cut, as in ST


def test_dimension_and_max_tokens(shared_embedder: Embedder) -> None:
    assert shared_embedder.get_embedding_dimension() == 384
    assert shared_embedder.get_max_tokens() == 256


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, InputTypeError),
        (b"bytes", InputTypeError),
        (["a", 1], InputTypeError),
        (["a", ["b"]], InputTypeError),
        ([], InvalidInputError),
    ],
)
def test_bad_input_is_rejected_before_loading(value: object, error: type[Exception]) -> None:
    e = Embedder(idle_timeout="never")
    try:
        with pytest.raises(error):
            e.embed(value)  # type: ignore[arg-type]
        assert e.get_memory_usage()["loads"] == 0
    finally:
        e.close()


def test_bad_keep_alive_names_the_key(shared_embedder: Embedder) -> None:
    with pytest.raises(ConfigError, match="keep_alive"):
        shared_embedder.embed("x", keep_alive="abc")


def test_bad_keep_alive_fails_even_when_the_text_is_cached(embedder: Embedder) -> None:
    embedder.embed("cached already")
    with pytest.raises(ConfigError, match="keep_alive"):
        embedder.embed("cached already", keep_alive="bogus")
    with pytest.raises(ConfigError, match="keep_alive"):
        embedder.embed_numpy(["cached already"], keep_alive="bogus")


def test_a_single_text_miss_is_looked_up_once(embedder: Embedder) -> None:
    embedder.prepare()  # the cache exists from here on
    before = embedder.get_memory_usage()["cache"]["misses"]
    embedder.embed("a sentence nobody has embedded here")
    assert embedder.get_memory_usage()["cache"]["misses"] == before + 1
    embedder.embed("a sentence nobody has embedded here")
    assert embedder.get_memory_usage()["cache"]["misses"] == before + 1


def test_cache_answers_repeats_in_input_order(embedder: Embedder) -> None:
    first = embedder.embed_numpy(["a", "b"])
    mixed = embedder.embed_numpy(["b", "new text", "a", "new text"])
    assert np.array_equal(mixed[0], first[1]) and np.array_equal(mixed[2], first[0])
    assert np.array_equal(mixed[1], mixed[3])
    fresh = Embedder(cache_memory_mb=0, idle_timeout="never")
    try:
        assert np.array_equal(fresh.embed_numpy(["new text"])[0], mixed[1])
    finally:
        fresh.close()


def test_module_functions_use_one_default_embedder() -> None:
    vector = lazyembed.embed("module level")
    assert len(vector) == 384
    assert lazyembed.get_default_embedder() is lazyembed.get_default_embedder()
    assert lazyembed.get_embedding_dimension() == 384
    assert lazyembed.get_memory_usage()["model_loaded"] is True
    assert lazyembed.unload_model() is True
    assert lazyembed.unload_model() is False


def test_the_cache_keeps_apart_vectors_of_other_kernels() -> None:
    """Pre-packed weights and OpenVINO round the last bits differently from the default,
    so their cached vectors live under other fingerprints (hits stay bit-exact)."""
    configurations = {
        "default": {},  # an idle timeout: pre-packed when busy
        "never, not pre-packed": {"idle_timeout": "never", "prepack_weights": False},
        "never": {"idle_timeout": "never"},  # auto: pre-packed
        "openvino": {"idle_timeout": "never", "backend": "openvino"},
    }
    prepared = {}
    for name, settings in configurations.items():
        embedder = Embedder(cache_memory_mb=1, **settings)
        prepared[name] = embedder.prepare()
        embedder.close()
    fingerprints = {name: p.fingerprint for name, p in prepared.items()}
    # An idle timeout pre-packs when busy: both layouts, so a key of its own.
    assert len(set(fingerprints.values())) == 4
    assert prepared["default"].spec.prepack == "when_busy"
    assert prepared["never, not pre-packed"].spec.prepack == "never"
    assert prepared["never"].spec.prepack == "at_load"
    assert prepared["openvino"].spec.prepack == "never"  # an ONNX Runtime option only


def test_an_embedder_is_a_context_manager_and_refuses_work_once_closed() -> None:
    with Embedder(idle_timeout="never") as e:
        vector = e.embed("closed soon")
        assert e.is_loaded
    assert not e.is_loaded
    # Neither a reload nor an answer from the cache (which outlives the store's close).
    for call in (
        lambda: e.embed("closed soon"),
        lambda: e.embed("never seen"),
        lambda: e.embed_numpy(["closed soon"]),
        lambda: e.embed("closed soon", keep_alive=-1),
        lambda: e.warmup(),
        lambda: e.count_tokens("closed soon"),
    ):
        with pytest.raises(ClosedError, match="close"):
            call()
    usage = e.get_memory_usage()  # reports still answer
    assert usage["model_loaded"] is False and usage["loads"] == 1
    e.close()  # idempotent
    assert len(vector) == 384


def test_close_while_unused_refuses_work_too() -> None:
    e = Embedder(idle_timeout="never")
    e.close()
    with pytest.raises(ClosedError):
        e.embed("never prepared")
    assert e.get_memory_usage()["loads"] == 0
