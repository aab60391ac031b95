"""Dynamic batching: concurrent requests share one model call.

Each request handler calls ``await batcher.submit(texts, ...)``. One collector task per
event loop takes requests off a FIFO queue: when the first one arrives it waits at most
``wait_ms`` (measured from that request's arrival) for more, stops early when
``max_size`` inputs are queued, and hands the batch to a single worker thread, so the
model runs off the event loop and one batch at a time. While that batch runs, the next
one forms in the queue; a request that waited behind a running batch is taken at once.

In the worker thread the batch is tokenised once (``count_tokens``: real counts for
``usage``), split into model calls of at most ``max_tokens`` tokens (whole requests; a
single larger request goes alone and the embedder chunks it) and grouped by keep-alive:
requests asking for different keep-alives get one ``embed_numpy`` call per distinct
value, in order of arrival, so each lease reaches the lifecycle exactly as if the
requests had come one by one (the longest live lease wins there; one request's 0 never
cuts another's pin). Requests with the usual ``None`` share one call. ``count_tokens``
runs untruncated (up to one token past the model's limit): the same counts, capped at the
limit, are the usage, and a count above the limit refuses a ``truncate=false`` input (an
input that exactly fits is embedded).

Results go back to each caller's future as a slice of the batch array, in input order.
A request whose handler was cancelled, or whose client disconnected (polled with the
request's ``is_disconnected`` when the batch is formed), is dropped before it reaches the
model; the disconnected one's caller gets ``ClientDisconnectedError`` (not a
cancellation: its handler is alive and should end quietly, answering nobody). An
exception fails only the requests of that model call; an input-validation error in a
shared call is retried request by request, so one bad request cannot fail its
neighbours. The collector never dies of an error.

``warmup`` (Ollama's "load the model" idiom) goes around the queue: it loads through the
lifecycle with the request's keep-alive in a thread of its own, so it neither waits
behind a running batch nor is answered by the embedding cache.

Shutdown: ``aclose(timeout)`` lets queued and running work finish for at most
``timeout`` seconds (the server's remaining graceful time), then fails every request
still unanswered with ``BatcherClosedError`` and returns without waiting for the running
model call, which may finish in its thread while the process exits.

Concurrency: the queue, the wake-up event and the counters are touched only from the
event loop thread (no lock). The worker thread gets its own list of items and returns a
list of outcomes; futures are resolved back on the loop. The embedder's own locks guard
the model.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from lazyembed.errors import (
    ClientDisconnectedError,
    ClosedError,
    InputTooLongError,
    InputTypeError,
    InvalidInputError,
)

log = logging.getLogger("lazyembed.server")

FloatArray = npt.NDArray[np.float32]
# Seconds for the lifecycle: None = the embedder's idle timeout, < 0 = pin, 0 = unload after.
KeepAliveSeconds = float | None


class EmbedderLike(Protocol):
    """What the server needs of ``lazyembed.Embedder`` (a fake satisfies it in tests)."""

    @property
    def model_name(self) -> str: ...

    @property
    def settings(self) -> Any: ...

    @property
    def is_loaded(self) -> bool: ...

    def embed_numpy(self, texts: list[str], *, keep_alive: float | None = None) -> FloatArray: ...

    def count_tokens(self, texts: list[str], *, truncate: bool = True) -> list[int]: ...

    def warmup(self, *, keep_alive: float | None = None) -> None: ...

    def unload_model(self) -> bool: ...

    def get_memory_usage(self) -> dict[str, Any]: ...

    def get_embedding_dimension(self) -> int: ...

    def get_max_tokens(self) -> int: ...


class BatcherClosedError(ClosedError):
    """The server is shutting down and takes no new work."""


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a model call."""

    vectors: FloatArray  # (n, dim) float32, C-contiguous, in the request's input order
    token_counts: list[int]
    load_seconds: float  # time the model spent loading during this request's call (0 if warm)


@dataclass(eq=False)
class _Item:
    texts: list[str]
    keep_alive: KeepAliveSeconds
    truncate: bool
    future: asyncio.Future[BatchResult]
    enqueued: float
    is_disconnected: Callable[[], Awaitable[bool]] | None
    counts: list[int] = field(default_factory=list)


_Outcome = BatchResult | BaseException


class Batcher:
    """Coalesce concurrent embedding requests into model batches (see module docstring)."""

    def __init__(
        self,
        embedder: EmbedderLike,
        *,
        max_size: int = 64,
        max_tokens: int = 16384,
        wait_ms: float = 2.0,
        on_batch: Callable[[int, int], None] | None = None,
        on_load: Callable[[float], None] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        if max_size < 1 or max_tokens < 1 or wait_ms < 0:
            raise ValueError("max_size and max_tokens must be >= 1 and wait_ms >= 0")
        self.embedder = embedder
        self.max_size = max_size
        self.max_tokens = max_tokens
        self.wait_s = wait_ms / 1000.0
        self._on_batch = on_batch  # (inputs, requests) per model call, from the worker
        self._on_load = on_load  # (seconds) per observed model load, from the worker
        self._on_drop = on_drop  # per request dropped before the model, on the loop
        self._queue: deque[_Item] = deque()
        self._running: list[_Item] = []  # the batch in the worker thread (for aclose)
        self._queued_inputs = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # One worker thread: the model runs one batch at a time, off the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lazyembed-batch")
        self._max_input_tokens: int | None = None
        self.dropped = 0
        self.batches = 0

    # ---- the loop side ------------------------------------------------------------------

    async def submit(
        self,
        texts: list[str],
        *,
        keep_alive: KeepAliveSeconds = None,
        truncate: bool = True,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> BatchResult:
        """Embed ``texts`` as part of the next batch; raises what the model call raised."""
        loop = asyncio.get_running_loop()
        wakeup = self._ensure_running(loop)
        future: asyncio.Future[BatchResult] = loop.create_future()
        self._queue.append(_Item(texts, keep_alive, truncate, future, loop.time(), is_disconnected))
        self._queued_inputs += len(texts)
        wakeup.set()
        return await future

    def _ensure_running(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        if self._closing:
            raise BatcherClosedError("the server is shutting down")
        if self._loop is not loop:
            # A new event loop (tests open one per client): the old queue died with its loop.
            self._queue.clear()
            self._queued_inputs = 0
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._task = None
        assert self._wakeup is not None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._collect(), name="lazyembed-batcher")
        return self._wakeup

    def reopen(self) -> None:
        """Accept work again after ``aclose`` (an app started a second time)."""
        if self._closing:
            self._closing = False
            self._task = None
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lazyembed-batch")

    def _restart(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop and not self._closing and not loop.is_closed():
            self._ensure_running(loop)

    async def aclose(self, timeout: float | None = None) -> bool:
        """Finish what is queued, then stop; later submits raise BatcherClosedError.

        With ``timeout`` (seconds) it waits no longer: whatever is still queued or running
        then fails with BatcherClosedError, and the running model call is left to finish
        in its thread. True when everything finished, False when work was abandoned.
        """
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        task = self._task
        finished = True
        if task is not None and self._loop is asyncio.get_running_loop() and not task.done():
            if timeout is None:
                await task
            else:
                done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout))
                finished = bool(done)
                if not finished:
                    self._abandon(task)
                    await asyncio.wait({task})  # cancelled: ends at once (the call is shielded)
        self._executor.shutdown(wait=False, cancel_futures=True)
        return finished

    def _abandon(self, collector: asyncio.Task[None]) -> None:
        """Past the shutdown bound: fail every unanswered request, stop the collector."""
        error = BatcherClosedError(
            "the server is shutting down: the graceful timeout ended before this request "
            "was embedded"
        )
        for item in [*self._queue, *self._running]:
            if not item.future.done():
                item.future.set_exception(error)
        self._queue.clear()
        self._queued_inputs = 0
        self._running = []
        collector.cancel()  # it waits on the running batch (shielded; that thread goes on)
        log.warning("shutdown: not waiting for the model call still running")

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        wakeup = self._wakeup
        assert wakeup is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                wakeup.clear()
                await wakeup.wait()
                continue
            try:
                await self._wait_for_more(loop, wakeup)
                batch = await self._take()
                if batch:
                    await self._run(loop, batch)
            except asyncio.CancelledError:
                # Cancelled from outside (not by aclose): the running batch still delivers
                # (shielded); whoever is queued gets a fresh collector.
                if not self._closing:
                    loop.call_soon(self._restart, loop)
                raise
            except Exception:  # never let the collector die: the server must stay up
                log.exception("batcher: unexpected error")

    async def _wait_for_more(self, loop: asyncio.AbstractEventLoop, wakeup: asyncio.Event) -> None:
        """Wait until max_size inputs are queued or wait_s after the oldest one arrived."""
        deadline = self._queue[0].enqueued + self.wait_s
        if self._queued_inputs >= self.max_size or loop.time() >= deadline:
            return
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            wakeup.set()

        timer = loop.call_at(deadline, expire)  # one timer per batch, not per arrival
        try:
            while not expired and not self._closing and self._queued_inputs < self.max_size:
                wakeup.clear()
                await wakeup.wait()
        finally:
            timer.cancel()

    async def _take(self) -> list[_Item]:
        """Pop whole requests up to max_size inputs (the first always), skipping dead ones."""
        batch: list[_Item] = []
        size = 0
        while self._queue:
            item = self._queue[0]
            if batch and size + len(item.texts) > self.max_size:
                break
            self._queue.popleft()
            self._queued_inputs -= len(item.texts)
            if item.future.done():  # its handler was cancelled
                self._dropped()
                continue
            if item.is_disconnected is not None:
                try:
                    gone = await item.is_disconnected()
                except Exception:
                    gone = False
                if gone:
                    item.future.set_exception(ClientDisconnectedError("client disconnected"))
                    self._dropped()
                    continue
            batch.append(item)
            size += len(item.texts)
        return batch

    def _dropped(self) -> None:
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop()

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        try:
            running = loop.run_in_executor(self._executor, self._process, batch)
        except RuntimeError as exc:  # executor shut down under us
            self._deliver(batch, [exc] * len(batch))
            return
        # Shielded: if this task is cancelled the batch still finishes in the thread and
        # its callers still get their vectors (nobody is left waiting forever).
        running.add_done_callback(lambda done: self._deliver_done(batch, done))
        self._running = batch
        try:
            await asyncio.shield(running)
        finally:
            self._running = []
        self.batches += 1

    def _deliver_done(self, batch: list[_Item], done: asyncio.Future[list[_Outcome]]) -> None:
        if done.cancelled():
            outcomes: list[_Outcome] = [BatcherClosedError("the batch was cancelled")] * len(batch)
        elif done.exception() is not None:
            outcomes = [done.exception()] * len(batch)  # type: ignore[list-item]
        else:
            outcomes = done.result()
        self._deliver(batch, outcomes)

    @staticmethod
    def _deliver(batch: list[_Item], outcomes: list[_Outcome]) -> None:
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future.done():  # cancelled by its handler meanwhile
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)

    async def warmup(self, keep_alive: KeepAliveSeconds = None) -> float:
        """Load the model now with a ``keep_alive`` lease; the seconds the load took.

        Around the queue, in a thread of its own: it must not wait behind a running batch,
        and the lifecycle already makes concurrent loads one load. 0.0 when already loaded.
        """
        if self._closing:
            raise BatcherClosedError("the server is shutting down")
        return await asyncio.to_thread(self._warmup, keep_alive)

    def _warmup(self, keep_alive: KeepAliveSeconds) -> float:
        loads_before = self._loads_if_cold()
        self.embedder.warmup(keep_alive=keep_alive)
        return self._load_seconds(loads_before)

    # ---- the worker thread --------------------------------------------------------------

    def _process(self, batch: list[_Item]) -> list[_Outcome]:
        outcomes: list[_Outcome | None] = [None] * len(batch)
        texts = [text for item in batch for text in item.texts]
        try:
            # Untruncated (up to limit + 1): one tokenisation gives the usage counts and
            # tells truncate=false requests whether an input is too long.
            counts = self.embedder.count_tokens(texts, truncate=False)
            limit = self._max_tokens()
        except Exception as exc:
            return [exc] * len(batch)
        position = 0
        for index, item in enumerate(batch):
            raw = counts[position : position + len(item.texts)]
            position += len(item.texts)
            item.counts = [min(count, limit) for count in raw]
            if not item.truncate:
                outcomes[index] = self._check_length(raw, limit)
        groups: dict[KeepAliveSeconds, list[int]] = {}
        for index, item in enumerate(batch):
            if outcomes[index] is None:
                groups.setdefault(item.keep_alive, []).append(index)
        for keep_alive, indices in groups.items():
            for chunk in self._chunks(batch, indices):
                self._call(batch, chunk, keep_alive, outcomes)
        return [o if o is not None else RuntimeError("request was not processed") for o in outcomes]

    def _max_tokens(self) -> int:
        limit = self._max_input_tokens
        if limit is None:
            limit = self._max_input_tokens = self.embedder.get_max_tokens()
        return limit

    @staticmethod
    def _check_length(raw_counts: list[int], limit: int) -> InputTooLongError | None:
        """truncate=false: refuse inputs that do not fit, as Ollama does (exactly fits: ok)."""
        for position, count in enumerate(raw_counts):
            if count > limit:
                return InputTooLongError(
                    f"input {position} is longer than the model's limit of {limit} tokens; "
                    "send shorter text or truncate: true"
                )
        return None

    def _chunks(self, batch: list[_Item], indices: list[int]) -> list[list[int]]:
        """Split requests into model calls of at most max_tokens tokens (whole requests)."""
        chunks: list[list[int]] = []
        current: list[int] = []
        tokens = 0
        for index in indices:
            need = sum(batch[index].counts)
            if current and tokens + need > self.max_tokens:
                chunks.append(current)
                current, tokens = [], 0
            current.append(index)
            tokens += need
        if current:
            chunks.append(current)
        return chunks

    def _call(
        self,
        batch: list[_Item],
        chunk: list[int],
        keep_alive: KeepAliveSeconds,
        outcomes: list[_Outcome | None],
    ) -> None:
        texts = [text for index in chunk for text in batch[index].texts]
        loads_before = self._loads_if_cold()
        try:
            vectors = np.ascontiguousarray(
                self.embedder.embed_numpy(texts, keep_alive=keep_alive), dtype=np.float32
            )
        except (InputTypeError, InvalidInputError) as exc:
            if len(chunk) == 1:
                outcomes[chunk[0]] = exc
            else:  # find the culprit: the others must not fail with it
                for index in chunk:
                    self._call(batch, [index], keep_alive, outcomes)
            return
        except Exception as exc:
            log.warning("batcher: model call failed: %s: %s", type(exc).__name__, exc)
            for index in chunk:
                outcomes[index] = exc
            return
        load_seconds = self._load_seconds(loads_before)
        if self._on_batch is not None:
            self._on_batch(len(texts), len(chunk))
        start = 0
        for index in chunk:
            item = batch[index]
            end = start + len(item.texts)
            outcomes[index] = BatchResult(vectors[start:end], item.counts, load_seconds)
            start = end

    def _loads_if_cold(self) -> int | None:
        """The load counter before a call that will load the model (None when warm)."""
        try:
            if self.embedder.is_loaded:
                return None
            return _as_count(self.embedder.get_memory_usage().get("loads"))
        except Exception:
            return None

    def _load_seconds(self, loads_before: int | None) -> float:
        """How long this call's model load took (reads the report only after a cold call)."""
        if loads_before is None:
            return 0.0
        try:
            report = self.embedder.get_memory_usage()
        except Exception:
            return 0.0
        if _as_count(report.get("loads")) <= loads_before:
            return 0.0  # answered from the cache, or another thread loaded it
        seconds = float(report.get("last_load_ms") or 0.0) / 1000.0
        if self._on_load is not None:
            self._on_load(seconds)
        return seconds


def _as_count(value: object) -> int:
    """A counter from the memory report: an int, or a dict of counts by reason."""
    if isinstance(value, dict):
        return sum(int(v) for v in value.values())
    if isinstance(value, (int, float)):
        return int(value)
    return 0
