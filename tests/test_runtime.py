"""Batch planning, session and run options of the ONNX runtime."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import random
import time
from typing import Any

import numpy as np
import pytest

from lazyembed import Embedder
from lazyembed.runtime import (
    MAX_RUN_TOKENS,
    PAD_GROWTH,
    PAD_SLACK,
    OnnxRuntime,
    load_runtime,
    plan_batches,
    session_options,
)
from lazyembed.runtime import onnx as onnx_runtime
from lazyembed.runtime.onnx import SHRINK_AFTER_TOKENS, SPIN_US


def test_plan_covers_every_text_once_in_order() -> None:
    rng = random.Random(7)
    lengths = sorted(rng.randint(3, 256) for _ in range(500))
    for size in (1, 8, 32, 64):
        plan = plan_batches(lengths, size)
        assert plan[0][0] == 0 and plan[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(plan))
        assert all(0 < end - start <= size for start, end in plan)


def test_plan_cuts_before_padding_short_texts_to_a_long_one() -> None:
    lengths = [8] * 10 + [200] * 10
    plan = plan_batches(lengths, 32)
    assert plan == [(0, 10), (10, 20)]
    for start, end in plan:
        assert lengths[end - 1] <= lengths[start] * PAD_GROWTH + PAD_SLACK


def test_uniform_lengths_fill_whole_batches() -> None:
    assert plan_batches([20] * 70, 32) == [(0, 32), (32, 64), (64, 70)]
    assert plan_batches([], 32) == []


def test_runs_are_bounded_by_padded_tokens() -> None:
    rng = random.Random(3)
    lengths = sorted(rng.randint(3, 256) for _ in range(300))
    for budget in (1, 300, 2048, MAX_RUN_TOKENS):
        plan = plan_batches(lengths, 64, budget)
        assert plan[0][0] == 0 and plan[-1][1] == len(lengths)
        # rows x the run's longest text (the padded width) stays within the budget,
        # except a lone text, which always runs.
        assert all(
            end - start == 1 or (end - start) * lengths[end - 1] <= budget for start, end in plan
        )
    # Long documents: 32 of 256 tokens run as several runs of MAX_RUN_TOKENS // 256.
    assert plan_batches([256] * 32, 32) == [
        (i, i + MAX_RUN_TOKENS // 256) for i in range(0, 32, MAX_RUN_TOKENS // 256)
    ]


def test_workers_spin_only_briefly_and_only_within_a_run() -> None:
    options = session_options(2, pre_optimized=True, prepack=False)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.intra_op.spin_duration_us") == str(SPIN_US)
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.disable_prepacking") == "1"
    assert options.intra_op_num_threads == 2


@pytest.mark.parametrize("prepack", ["never", "at_load", "when_busy"])
def test_an_idle_loaded_model_uses_no_cpu(
    shared_embedder: Any, prepack: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPU time (not wall time) of the process while a loaded model sits idle."""
    monkeypatch.setattr(onnx_runtime, "PREPACK_AFTER_RUNS", 3)
    spec = dataclasses.replace(shared_embedder.prepare().spec, prepack=prepack)
    runtime = load_runtime(spec)
    assert isinstance(runtime, OnnxRuntime)
    try:
        for _ in range(5):
            runtime.encode(["a short sentence to wake the thread pool"])
        assert runtime.prepacked is (prepack != "never")
        before = sum(os.times()[:2])
        time.sleep(1.0)
        # Spinning workers would burn a good part of a core each for the whole second.
        assert sum(os.times()[:2]) - before < 0.1
    finally:
        runtime.close()


class _RecordingSession:
    """The real session, recording whether each run shrank the arena."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.shrank: list[bool] = []

    def run(self, names: Any, feeds: Any, options: Any) -> Any:
        try:
            options.get_run_config_entry("memory.enable_memory_arena_shrinkage")
            self.shrank.append(True)
        except RuntimeError:  # the entry is absent
            self.shrank.append(False)
        return self._session.run(names, feeds, options)


def test_only_big_runs_shrink_the_arena(shared_embedder: Any) -> None:
    runtime = OnnxRuntime(shared_embedder.prepare().spec)
    recorder = _RecordingSession(runtime._session)
    runtime._session = recorder  # type: ignore[assignment]
    runtime.encode(["short", "texts"])  # one small run
    runtime.encode(["word " * 300])  # one run of 256 tokens
    runtime.encode(["word " * 150] * 2 + ["hi"])  # a small run and a big one
    assert recorder.shrank == [False, True, False, True]
    assert SHRINK_AFTER_TOKENS <= 256
    runtime.close()


TEXTS = ["a short query", "a somewhat longer sentence about memory-mapped weights", ""]


def test_prepacked_weights_give_the_same_vectors_by_other_kernels(shared_embedder: Any) -> None:
    spec = shared_embedder.prepare().spec
    assert spec.prepack == "never"  # the fixture pins the default layout
    plain = OnnxRuntime(dataclasses.replace(spec, prepack="never"))
    packed = OnnxRuntime(dataclasses.replace(spec, prepack="at_load"))
    try:
        entry = "session.disable_prepacking"
        assert plain._session.get_session_options().get_session_config_entry(entry) == "1"
        assert packed._session.get_session_options().get_session_config_entry(entry) == "0"
        a, b = plain.encode(TEXTS).vectors, packed.encode(TEXTS).vectors
        assert np.allclose(a, b, atol=1e-5)
        # The packed kernels really ran: they round differently in the last bits.
        assert not np.array_equal(a, b)
    finally:
        plain.close()
        packed.close()


def test_auto_prepacks_a_model_that_never_idles_out_and_keeps_its_bits_across_reloads() -> None:
    staying = Embedder(cache_memory_mb=0, idle_timeout="never")
    coming_and_going = Embedder(cache_memory_mb=0, idle_timeout="5m")
    try:
        assert staying.prepare().spec.prepack == "at_load"
        assert coming_and_going.prepare().spec.prepack == "when_busy"
        first = staying.embed_numpy(TEXTS)
        assert staying.unload_model()
        assert np.array_equal(staying.embed_numpy(TEXTS), first)  # one layout per Embedder
    finally:
        staying.close()
        coming_and_going.close()


def _when_busy(shared_embedder: Any, monkeypatch: pytest.MonkeyPatch) -> OnnxRuntime:
    monkeypatch.setattr(onnx_runtime, "PREPACK_AFTER_RUNS", 3)
    spec = dataclasses.replace(shared_embedder.prepare().spec, prepack="when_busy")
    return OnnxRuntime(spec)


def test_a_busy_model_swaps_in_prepacked_weights(
    shared_embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = _when_busy(shared_embedder, monkeypatch)
    unpacked = OnnxRuntime(dataclasses.replace(runtime.spec, prepack="never"))
    packed = OnnxRuntime(dataclasses.replace(runtime.spec, prepack="at_load"))

    def one_by_one(model: OnnxRuntime) -> Any:  # one run per text
        return np.stack([model.encode([text]).vectors[0] for text in TEXTS])

    try:
        runtime.encode(["run 1"])
        first_session = runtime._session
        runtime.encode(["run 2"])
        assert not runtime.prepacked and runtime._session is first_session  # counted in runs
        # Run 3 still runs on the mapped weights; the swap follows its vectors.
        assert np.array_equal(runtime.encode(TEXTS[:1]).vectors, unpacked.encode(TEXTS[:1]).vectors)
        assert runtime.prepacked
        after = one_by_one(runtime)
        # Now the very kernels of a session pre-packed at load, bit for bit.
        assert np.array_equal(after, one_by_one(packed))
        before = one_by_one(unpacked)
        assert np.allclose(before, after, atol=1e-5) and not np.array_equal(before, after)
        swapped = runtime._session
        for _ in range(10):  # one swap per load, however busy it stays
            runtime.encode(["more"])
        assert runtime._session is swapped
    finally:
        for model in (runtime, unpacked, packed):
            model.close()


def test_one_call_keeps_one_layout_across_the_swap(
    shared_embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call whose runs cross the mark finishes on the session it started with."""
    runtime = _when_busy(shared_embedder, monkeypatch)
    unpacked = OnnxRuntime(dataclasses.replace(runtime.spec, prepack="never"))
    texts = [f"text {i} " + "word " * (i * 40) for i in range(5)]  # lengths apart: 5 runs
    try:
        assert np.array_equal(runtime.encode(texts).vectors, unpacked.encode(texts).vectors)
        assert runtime.prepacked
    finally:
        runtime.close()
        unpacked.close()


def test_a_failed_prepacking_leaves_the_model_running_unpacked(
    shared_embedder: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = _when_busy(shared_embedder, monkeypatch)
    real_new_session = runtime._new_session

    def failing(*, prepack: bool) -> Any:
        if prepack:
            raise MemoryError("no room for the packed copy")  # the sort of thing that fails
        return real_new_session(prepack=prepack)

    monkeypatch.setattr(runtime, "_new_session", failing)
    try:
        expected = runtime.encode(TEXTS).vectors
        with caplog.at_level(logging.WARNING, logger="lazyembed"):
            for text in TEXTS:  # three runs at least: the third tries to pre-pack
                runtime.encode([text])
        assert "pre-packing the weights failed" in caplog.text
        assert not runtime.prepacked
        assert np.array_equal(runtime.encode(TEXTS).vectors, expected)
    finally:
        runtime.close()
