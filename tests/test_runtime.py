"""Batch planning, session and run options of the ONNX runtime."""

from __future__ import annotations

import itertools
import os
import random
import time
from typing import Any

from lazyembed.runtime import (
    MAX_RUN_TOKENS,
    PAD_GROWTH,
    PAD_SLACK,
    OnnxRuntime,
    load_runtime,
    plan_batches,
    session_options,
)
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
    options = session_options(2, pre_optimized=True)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.intra_op.spin_duration_us") == str(SPIN_US)
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.disable_prepacking") == "1"
    assert options.intra_op_num_threads == 2


def test_an_idle_loaded_model_uses_no_cpu(shared_embedder: Any) -> None:
    """CPU time (not wall time) of the process while a loaded model sits idle."""
    runtime = load_runtime(shared_embedder.prepare().spec)
    try:
        for _ in range(5):
            runtime.encode(["a short sentence to wake the thread pool"])
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
