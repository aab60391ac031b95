"""The Embedder wiring: cache ↔ lifecycle, keep-alive leases, pressure and isolation."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

import lazyembed.embedder as embedder_module
from helpers import wait_until
from lazyembed import Embedder
from lazyembed.errors import ClosedError
from lazyembed.runtime import EncodeResult, OnnxRuntime, RuntimeSpec


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record every batch of texts the real runtime is asked to encode."""
    calls: list[list[str]] = []
    real_load = embedder_module.load_runtime

    class Spy:
        def __init__(self, runtime: OnnxRuntime) -> None:
            self.runtime = runtime

        def encode(self, texts: Sequence[str]) -> EncodeResult:
            calls.append(list(texts))
            return self.runtime.encode(texts)

        def close(self) -> None:
            self.runtime.close()

    def load(spec: RuntimeSpec) -> Any:
        return Spy(real_load(spec))

    monkeypatch.setattr(embedder_module, "load_runtime", load)
    return calls


def test_all_hits_never_load_nor_touch_the_deadline(encoded: list[list[str]]) -> None:
    clock = _Clock()
    e = Embedder(idle_timeout="10m", clock=clock)
    try:
        first = e.embed_numpy(["one", "two"])
        clock.now += 100
        before = e.get_memory_usage()["unload_in_s"]
        assert e.embed_numpy(["two", "one"]).tobytes() == first[::-1].tobytes()
        assert e.get_memory_usage()["unload_in_s"] == pytest.approx(before)
        e.unload_model()
        again = e.embed_numpy(["one", "two", "one"])
        usage = e.get_memory_usage()
        assert usage["state"] == "unloaded" and usage["loads"] == 1
        assert [ev["kind"] for ev in usage["events"]] == ["load", "unload"]
        assert np.array_equal(again[[0, 1]], first) and np.array_equal(again[2], first[0])
        assert (usage["cache"]["hits"], usage["cache"]["misses"]) == (5, 2)
    finally:
        e.close()
    assert encoded == [["one", "two"]]


def test_a_cache_hit_records_the_keep_alive_it_asks_for_without_loading(
    encoded: list[list[str]],
) -> None:
    """Issue 23: a hit never loads, but its explicit keep-alive is a lease like a miss's."""
    clock = _Clock()
    e = Embedder(idle_timeout="1h", clock=clock)
    try:
        e.embed("hello", keep_alive="2s")
        e.embed("hello", keep_alive=-1)  # the single-text path
        usage = e.get_memory_usage()
        assert usage["pinned"] is True and usage["unload_in_s"] is None
        assert e.unload_model() is True
        e.embed_numpy(["abc", "def"])  # loads; the default lease of the hour
        e.embed_numpy(["def", "abc"], keep_alive="5s")  # the list path: all hits
        assert e.get_memory_usage()["unload_in_s"] == pytest.approx(5.0)
        clock.now += 5
        e.embed("abc", keep_alive=0)  # nothing else holds it: unloaded before it returns
        usage = e.get_memory_usage()
        assert usage["model_loaded"] is False and usage["last_unload"]["reason"] == "keep_alive"
        e.embed("abc", keep_alive=-1)  # unloaded: a hit has no model to pin, loads none
        usage = e.get_memory_usage()
        assert usage["model_loaded"] is False and usage["loads"] == 2
    finally:
        e.close()
    assert encoded == [["hello"], ["abc", "def"]]


def test_partial_hits_embed_only_the_misses_once(encoded: list[list[str]]) -> None:
    e = Embedder(idle_timeout="never")
    try:
        e.embed_numpy(["a", "b"])
        mixed = e.embed_numpy(["b", "c", "a", "c", "d"])
        fresh = Embedder(cache_memory_mb=0, idle_timeout="never")
        try:
            expected = fresh.embed_numpy(["b", "c", "a", "c", "d"])
        finally:
            fresh.close()
    finally:
        e.close()
    assert encoded[:2] == [["a", "b"], ["c", "d"]]
    assert np.abs(mixed - expected).max() < 1e-6


def test_persistent_store_answers_a_new_process_without_loading(tmp_path: Path) -> None:
    store = tmp_path / "cache.sqlite3"
    writer = Embedder(cache_persistent=True, cache_path=store, idle_timeout="never")
    try:
        vector = writer.embed_numpy(["kept on disk"])
    finally:
        writer.close()
    reader = Embedder(cache_persistent=True, cache_path=store, idle_timeout="never")
    try:
        again = reader.embed_numpy(["kept on disk"])
        usage = reader.get_memory_usage()
    finally:
        reader.close()
    assert again.tobytes() == vector.tobytes()  # bitwise identical
    assert usage["loads"] == 0 and usage["cache"]["sqlite_hits"] == 1


def test_variant_change_misses_the_shared_store(tmp_path: Path) -> None:
    store = tmp_path / "cache.sqlite3"
    vectors = {}
    for variant in ["fp32", "int8"]:
        e = Embedder(variant=variant, cache_persistent=True, cache_path=store, idle_timeout="never")
        try:
            vectors[variant] = e.embed_numpy(["the same text"])
            assert e.get_memory_usage()["loads"] == 1, f"{variant} was answered from the cache"
        finally:
            e.close()
    assert not np.array_equal(vectors["fp32"], vectors["int8"])


def _model_with(folder: Path, model_dir: Path, name: str, content: Any) -> Path:
    """A model folder linking to `model_dir`'s files, but with `name` replaced by JSON."""
    folder.mkdir()
    for item in model_dir.iterdir():
        if item.name != name:
            (folder / item.name).symlink_to(item)
    (folder / name).write_text(json.dumps(content), encoding="utf-8")
    return folder


def test_max_seq_length_change_misses_the_shared_store(tmp_path: Path, model_dir: Path) -> None:
    short = _model_with(
        tmp_path / "short-model", model_dir, "sentence_bert_config.json", {"max_seq_length": 128}
    )
    store = tmp_path / "cache.sqlite3"
    text = "word " * 300
    results = []
    for model in [None, str(short)]:
        e = Embedder(model=model, cache_persistent=True, cache_path=store, idle_timeout="never")
        try:
            results.append(e.embed_numpy([text]))
            assert e.get_max_tokens() == (256 if model is None else 128)
            assert e.get_memory_usage()["loads"] == 1
        finally:
            e.close()
    assert not np.array_equal(results[0], results[1])


def test_a_changed_tokenizer_misses_the_shared_store(tmp_path: Path, model_dir: Path) -> None:
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["normalizer"]["lowercase"] = False  # same weights, other token ids
    cased = _model_with(tmp_path / "cased-model", model_dir, "tokenizer.json", tokenizer)
    store = tmp_path / "cache.sqlite3"
    text = "Lowercasing Changes The Tokens"
    results, fingerprints = [], []
    for model in [None, str(cased)]:
        e = Embedder(model=model, cache_persistent=True, cache_path=store, idle_timeout="never")
        try:
            results.append(e.embed_numpy([text]))
            fingerprints.append(e.prepare().fingerprint)
            assert e.get_memory_usage()["loads"] == 1  # a miss: computed, not the stale hit
        finally:
            e.close()
    assert fingerprints[0] != fingerprints[1]
    assert not np.array_equal(results[0], results[1])


@pytest.fixture
def uncached() -> Iterator[Embedder]:
    e = Embedder(cache_memory_mb=0, idle_timeout="never")
    yield e
    e.close()


def test_keep_alive_zero_unloads_before_the_call_returns(uncached: Embedder) -> None:
    uncached.embed("brief", keep_alive=0)
    usage = uncached.get_memory_usage()  # at once: no wait, no "unloading" in between
    assert usage["model_loaded"] is False and usage["state"] == "unloaded"
    assert usage["last_unload"]["reason"] == "keep_alive" and not uncached.is_loaded
    report = uncached.memory_report(events=False)
    assert report.model_loaded is False and report.lifecycle.events == ()


def test_keep_alive_zero_after_a_default_call_unloads_before_it_returns() -> None:
    """Issue 19: the 0 replaces the default lease the first call left."""
    with Embedder(cache_memory_mb=0) as e:  # the default idle timeout, 30 minutes
        e.embed("hi")
        assert e.get_memory_usage()["unload_in_s"] > 1000
        e.embed("bye", keep_alive=0)
        usage = e.get_memory_usage()
        assert usage["model_loaded"] is False and usage["last_unload"]["reason"] == "keep_alive"


def test_a_pin_survives_another_callers_zero() -> None:
    clock = _Clock()
    e = Embedder(cache_memory_mb=0, idle_timeout="never", clock=clock)
    try:
        e.embed("pinned", keep_alive=-1)
        e.embed("brief", keep_alive="0s")
        clock.now += 10**6  # far past any deadline the zero could have left
        assert e.lifecycle.poll() is None  # what the watcher would do now: nothing
        usage = e.get_memory_usage()
        assert usage["model_loaded"] is True and usage["unload_in_s"] is None
        assert e.unload_model() is True
    finally:
        e.close()


def test_set_idle_timeout_shortens_a_running_countdown(uncached: Embedder) -> None:
    uncached.set_idle_timeout("1h")
    uncached.embed("x")
    assert uncached.get_memory_usage()["unload_in_s"] > 3000
    uncached.set_idle_timeout(0.2)
    assert wait_until(lambda: uncached.get_memory_usage()["state"] == "unloaded")
    assert uncached.get_memory_usage()["last_unload"]["reason"] == "idle"


def test_pressure_unloads_an_idle_model_early() -> None:
    # A threshold no machine meets: MemAvailable is always "too low".
    e = Embedder(
        cache_memory_mb=0,
        idle_timeout="1h",
        pressure_unload=True,
        pressure_check_interval=0.2,
        pressure_min_available_mb=10**9,
    )
    try:
        e.embed("under pressure")
        assert wait_until(lambda: e.get_memory_usage()["state"] == "unloaded")
        usage = e.get_memory_usage()
        assert usage["last_unload"]["reason"] == "pressure"
        assert usage["pressure"]["last_trigger"] is not None
        assert len(e.embed("still works")) == 384
    finally:
        e.close()


def test_isolated_mode_matches_in_process_and_unload_ends_the_worker(uncached: Embedder) -> None:
    texts = ["isolated worker", "same vectors as in process"]
    expected = uncached.embed_numpy(texts)
    e = Embedder(isolation="process", cache_memory_mb=0, idle_timeout="never")
    try:
        got = e.embed_numpy(texts)
        report = e.get_memory_usage()
        worker = report["worker"]
        assert worker is not None and worker["worker_rss_mb"] > 10
        # The model's memory is the worker's (this process barely grows at a load).
        assert report["model_mb"] == worker["worker_uss_mb"] > 10
        pid = worker["worker_pid"]
        assert e.unload_model() is True
        assert wait_until(lambda: not psutil.pid_exists(pid))  # exited and reaped: no zombie
    finally:
        e.close()
    assert np.abs(got - expected).max() < 1e-6


def test_a_cache_damaged_after_preparation_heals_at_the_next_load(tmp_path: Path) -> None:
    """A prepared Embedder checks its converted files again at every load."""
    embedder = Embedder(cache_memory_mb=0, model_cache_dir=str(tmp_path / "models"))
    try:
        before = embedder.embed("heal me", keep_alive=0)
        data = embedder.prepare().converted.data_path
        garbage = data.with_name(data.name + ".garbage")
        garbage.write_bytes(os.urandom(data.stat().st_size))
        os.replace(garbage, data)  # replaced, as a careless copy would leave it
        assert embedder.embed("heal me") == pytest.approx(before, abs=1e-6)
    finally:
        embedder.close()


def test_isolated_mode_follows_cache_hit_leases_and_close() -> None:
    e = Embedder(isolation="process", idle_timeout="1h", cache_memory_mb=1)
    try:
        e.embed("hello", keep_alive="2s")
        e.embed("hello", keep_alive=-1)  # a hit: pins the worker's model
        usage = e.get_memory_usage()
        assert usage["pinned"] is True and usage["unload_in_s"] is None
        pid = usage["worker"]["worker_pid"]
        e.embed_numpy(["hello"], keep_alive=0)  # the pin survives another call's 0
        assert e.is_loaded
        assert e.unload_model() is True
        assert wait_until(lambda: not psutil.pid_exists(pid))
        e.embed("abc")
        pid = e.get_memory_usage()["worker"]["worker_pid"]
        e.embed("abc", keep_alive=0)  # a hit: replaces the default lease, ends the worker
        assert not e.is_loaded and e.get_memory_usage()["loads"] == 2
        assert wait_until(lambda: not psutil.pid_exists(pid))
    finally:
        e.close()
    with pytest.raises(ClosedError):
        e.embed("abc")
    with pytest.raises(ClosedError):
        e.warmup()
    assert e.get_memory_usage()["loads"] == 2  # no worker started after close()
