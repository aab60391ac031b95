"""The dynamic batcher, with a fake embedder: coalescing, fairness, drops and shutdown."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from lazyembed.config import KeepAlive, ServerSettings
from lazyembed.errors import ClientDisconnectedError, InvalidInputError
from lazyembed.server import InputTooLongError, create_app
from lazyembed.server.app import begin_shutdown
from lazyembed.server.batcher import BatcherClosedError
from server_helpers import FakeEmbedder, make_batcher, run, wait_entered


def test_batcher_coalesces_waiting_requests_in_order() -> None:
    fake = FakeEmbedder()
    fake.gate = threading.Event()
    batcher = make_batcher(fake, max_inputs=64, wait_ms=0)

    async def main() -> list[Any]:
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await wait_entered(fake)  # the model is busy: the next requests queue up
        texts = [[f"text {i}", f"more {i}"] for i in range(10)]
        rest = [asyncio.ensure_future(batcher.submit(t)) for t in texts]
        await asyncio.sleep(0)
        fake.gate.set()  # type: ignore[union-attr]
        results = await asyncio.gather(first, *rest)
        await batcher.aclose()
        return [texts, results]

    texts, results = run(main())
    assert fake.calls[0][0] == ["first"]
    assert fake.calls[1][0] == [t for pair in texts for t in pair]  # one call, arrival order
    for pair, result in zip(texts, results[1:], strict=True):
        np.testing.assert_array_equal(result.vectors, np.stack([fake.vector(t) for t in pair]))
        assert result.token_counts == fake.count_tokens(pair)


def test_batcher_respects_max_size_and_max_tokens() -> None:
    fake = FakeEmbedder()
    fake.gate = threading.Event()
    batcher = make_batcher(fake, max_inputs=4, max_tokens=12, wait_ms=0)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(["x"]))
        await wait_entered(fake)
        # 6 requests of 1 input and 4 tokens each ("a b" → 2 words + [CLS] + [SEP])
        rest = [asyncio.ensure_future(batcher.submit([f"a{i} b"])) for i in range(6)]
        await asyncio.sleep(0)
        fake.gate.set()  # type: ignore[union-attr]
        await asyncio.gather(first, *rest)
        await batcher.aclose()

    run(main())
    sizes = [len(texts) for texts, _ in fake.calls[1:]]
    assert sum(sizes) == 6
    assert max(sizes) <= 3  # 12 tokens / 4 per input, although max_size would allow 4
    assert all(len(texts) * 4 <= 12 for texts, _ in fake.calls[1:])


def test_batcher_waits_for_more_but_not_past_max_size() -> None:
    fake = FakeEmbedder()
    batcher = make_batcher(fake, max_inputs=4, wait_ms=600_000)  # only a full batch can go

    async def main() -> None:
        await asyncio.gather(*(batcher.submit([f"t{i}"]) for i in range(4)))
        await batcher.aclose()

    run(main())
    assert [texts for texts, _ in fake.calls] == [["t0", "t1", "t2", "t3"]]


def test_batcher_groups_keep_alive_values() -> None:
    fake = FakeEmbedder()
    fake.gate = threading.Event()
    batcher = make_batcher(fake, wait_ms=0)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await wait_entered(fake)
        jobs = [
            batcher.submit(["a"]),
            batcher.submit(["b"], keep_alive=KeepAlive.after(0)),
            batcher.submit(["c"]),
            batcher.submit(["d"], keep_alive=KeepAlive.FOREVER),
        ]
        rest = [asyncio.ensure_future(j) for j in jobs]
        await asyncio.sleep(0)
        fake.gate.set()  # type: ignore[union-attr]
        await asyncio.gather(first, *rest)
        await batcher.aclose()

    run(main())
    assert fake.calls[1:] == [
        (["a", "c"], KeepAlive.DEFAULT),
        (["b"], KeepAlive.after(0)),
        (["d"], KeepAlive.FOREVER),
    ]


def test_batcher_isolates_a_bad_request_and_survives_model_errors() -> None:
    fake = FakeEmbedder()
    fake.gate = threading.Event()
    batcher = make_batcher(fake, wait_ms=0)

    async def main() -> list[Any]:
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await wait_entered(fake)
        jobs = [batcher.submit(["ok 1"]), batcher.submit(["bad"]), batcher.submit(["ok 2"])]
        rest = [asyncio.ensure_future(j) for j in jobs]
        await asyncio.sleep(0)
        fake.gate.set()  # type: ignore[union-attr]
        outcomes = await asyncio.gather(first, *rest, return_exceptions=True)
        fake.fail_with = RuntimeError("the model broke")
        broken = await asyncio.gather(batcher.submit(["x"]), return_exceptions=True)
        fake.fail_with = None
        after = await batcher.submit(["still up"])
        await batcher.aclose()
        return [outcomes, broken, after]

    outcomes, broken, after = run(main())
    assert isinstance(outcomes[2], InvalidInputError)
    np.testing.assert_array_equal(outcomes[1].vectors[0], fake.vector("ok 1"))
    np.testing.assert_array_equal(outcomes[3].vectors[0], fake.vector("ok 2"))
    assert isinstance(broken[0], RuntimeError)
    np.testing.assert_array_equal(after.vectors[0], fake.vector("still up"))


def test_batcher_drops_disconnected_and_cancelled_requests() -> None:
    fake = FakeEmbedder()
    fake.gate = threading.Event()
    batcher = make_batcher(fake, wait_ms=0)

    async def gone(started: bool) -> bool:
        return True

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await wait_entered(fake)
        dropped = asyncio.ensure_future(batcher.submit(["disconnected"], is_disconnected=gone))
        cancelled = asyncio.ensure_future(batcher.submit(["cancelled"]))
        kept = asyncio.ensure_future(batcher.submit(["kept"]))
        await asyncio.sleep(0)
        cancelled.cancel()
        fake.gate.set()  # type: ignore[union-attr]
        await asyncio.gather(first, kept)
        with pytest.raises(ClientDisconnectedError):  # not a cancellation: see the guard
            await dropped
        await batcher.aclose()

    run(main())
    assert fake.calls[1:] == [(["kept"], KeepAlive.DEFAULT)]
    assert batcher.dropped == 2


def test_batcher_truncate_false_refuses_only_the_long_request() -> None:
    fake = FakeEmbedder(max_tokens=8)
    batcher = make_batcher(fake, wait_ms=50)

    async def main() -> list[Any]:
        long_text = " ".join(["word"] * 20)
        jobs = [batcher.submit([long_text], truncate=False), batcher.submit([long_text])]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.aclose()
        return outcomes

    refused, truncated = run(main())
    assert isinstance(refused, InputTooLongError)
    assert truncated.token_counts == [8]


def test_batcher_close_is_bounded_and_fails_what_is_left() -> None:
    """Past the timeout aclose fails queued and running requests and does not wait."""
    fake = FakeEmbedder()
    fake.gate = threading.Event()  # the running call cannot finish before the test says
    batcher = make_batcher(fake, wait_ms=0)

    async def main() -> list[Any]:
        running = asyncio.ensure_future(batcher.submit(["running"]))
        await wait_entered(fake)
        queued = asyncio.ensure_future(batcher.submit(["queued"]))
        await asyncio.sleep(0)
        finished = await batcher.aclose(timeout=0.05)
        outcomes = await asyncio.gather(running, queued, return_exceptions=True)
        return [finished, *outcomes]

    try:
        finished, running, queued = run(main())
    finally:
        fake.gate.set()  # let the abandoned thread end
    assert finished is False
    assert isinstance(running, BatcherClosedError) and "graceful timeout" in str(running)
    assert isinstance(queued, BatcherClosedError)
    assert all(texts != ["queued"] for texts, _ in fake.calls)


def test_batcher_close_within_the_timeout_answers_everything() -> None:
    fake = FakeEmbedder()
    batcher = make_batcher(fake, wait_ms=0)

    async def main() -> list[Any]:
        jobs = [asyncio.ensure_future(batcher.submit([f"t{i}"])) for i in range(3)]
        await asyncio.sleep(0)
        finished = await batcher.aclose(timeout=600)
        return [finished, *(await asyncio.gather(*jobs))]

    finished, *results = run(main())
    assert finished is True
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.vectors[0], fake.vector(f"t{i}"))


def test_graceful_remaining_counts_from_begin_shutdown() -> None:
    app = create_app(FakeEmbedder(), graceful_timeout=30)
    srv = app.state.server
    assert srv.graceful_remaining() == 30.0  # nobody said when the shutdown began
    begin_shutdown(app)
    assert 0.0 <= srv.graceful_remaining() <= 30.0
    srv.shutdown_began -= 31  # the graceful timeout has passed
    assert srv.graceful_remaining() == 0.0
    default = ServerSettings().graceful_timeout  # the one default, in the settings
    assert create_app(FakeEmbedder()).state.server.graceful_remaining() == default


def test_batcher_after_close_refuses_new_work() -> None:
    batcher = make_batcher(FakeEmbedder(), wait_ms=0)

    async def main() -> None:
        await batcher.submit(["x"])
        await batcher.aclose()
        with pytest.raises(BatcherClosedError):
            await batcher.submit(["y"])

    run(main())


# ---- fairness, departures and the shutdown cut-off (chunks of max_inputs) -----------------

LONG = [f"long {i}" for i in range(20)]  # five chunks of four


def test_a_short_request_is_answered_between_the_chunks_of_a_long_one() -> None:
    fake = FakeEmbedder()
    fake.gate = threading.Event()
    batcher = make_batcher(fake, max_inputs=4, wait_ms=0)
    finished: list[str] = []

    async def main() -> list[Any]:
        long = asyncio.ensure_future(batcher.submit(LONG))
        long.add_done_callback(lambda _: finished.append("long"))
        await wait_entered(fake)  # the long request's first chunk is in the model
        short = asyncio.ensure_future(batcher.submit(["short"]))
        short.add_done_callback(lambda _: finished.append("short"))
        await asyncio.sleep(0)
        fake.gate.set()  # type: ignore[union-attr]
        results = await asyncio.gather(long, short)
        await batcher.aclose()
        return list(results)

    long_result, short_result = run(main())
    assert finished == ["short", "long"]
    calls = [texts for texts, _ in fake.calls]
    assert all(len(texts) <= 4 for texts in calls)
    short_call = next(i for i, texts in enumerate(calls) if "short" in texts)
    assert short_call == 1  # the batch right after the running one, shared with the long
    assert calls[1] == [*LONG[4:7], "short"]
    # The long request's chunks come back whole and in order.
    np.testing.assert_array_equal(long_result.vectors, np.stack([fake.vector(t) for t in LONG]))
    assert long_result.token_counts == fake.count_tokens(LONG)
    np.testing.assert_array_equal(short_result.vectors[0], fake.vector("short"))


def test_a_departed_clients_later_chunks_never_reach_the_model() -> None:
    fake = FakeEmbedder()
    fake.gate = threading.Event()
    batcher = make_batcher(fake, max_inputs=4, wait_ms=0)
    gone = False
    asked: list[bool] = []

    async def is_disconnected(started: bool) -> bool:
        asked.append(started)
        return gone

    async def main() -> None:
        nonlocal gone
        long = asyncio.ensure_future(batcher.submit(LONG, is_disconnected=is_disconnected))
        await wait_entered(fake)
        gone = True  # the client hangs up while its first chunk runs
        fake.gate.set()  # type: ignore[union-attr]
        with pytest.raises(ClientDisconnectedError):
            await long
        await batcher.submit(["after"])
        await batcher.aclose()

    run(main())
    assert [texts for texts, _ in fake.calls] == [LONG[:4], ["after"]]
    assert batcher.dropped == 1
    assert asked == [False, True]  # asked before each chunk: not started, then started


def test_a_failed_chunk_fails_its_request_and_skips_the_rest() -> None:
    fake = FakeEmbedder()
    batcher = make_batcher(fake, max_inputs=4, wait_ms=0)
    texts = [*LONG[:6], "bad", *LONG[6:]]  # "bad" is in the second chunk

    async def main() -> list[Any]:
        outcomes = await asyncio.gather(batcher.submit(texts), return_exceptions=True)
        await batcher.aclose()
        return list(outcomes)

    (outcome,) = run(main())
    assert isinstance(outcome, InvalidInputError)
    assert [t for t, _ in fake.calls] == [texts[:4]]  # the second chunk failed; no third


def test_stop_by_answers_unfinished_requests_without_waiting_for_the_model() -> None:
    fake = FakeEmbedder()
    fake.gate = threading.Event()
    batcher = make_batcher(fake, max_inputs=4, wait_ms=0)

    async def main() -> list[Any]:
        long = asyncio.ensure_future(batcher.submit(LONG))
        await wait_entered(fake)
        queued = asyncio.ensure_future(batcher.submit(["queued"]))
        await asyncio.sleep(0)
        batcher.stop_by(0)
        # Answered while the first chunk is still in the model (its gate is closed).
        outcomes = await asyncio.gather(long, queued, return_exceptions=True)
        fake.gate.set()  # type: ignore[union-attr]
        finished = await batcher.aclose(timeout=60)
        return [finished, *outcomes]

    finished, long, queued = run(main())
    assert isinstance(long, BatcherClosedError) and isinstance(queued, BatcherClosedError)
    assert finished is False  # a model call was left running when it was abandoned
    assert [texts for texts, _ in fake.calls] == [LONG[:4]]


def test_batches_are_bounded_by_tokens_when_they_form() -> None:
    """A batch is the unit nobody can interrupt: max_tokens bounds it, not only its calls."""
    fake = FakeEmbedder()
    batcher = make_batcher(fake, max_inputs=64, max_tokens=600, wait_ms=0)
    texts = [f"{i}" + "x" * 249 for i in range(10)]  # 250 characters: at most 252 tokens

    async def main() -> None:
        await batcher.submit(texts)
        await batcher.aclose()

    run(main())
    assert [len(t) for t, _ in fake.calls] == [2, 2, 2, 2, 2]
