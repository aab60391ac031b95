"""Dynamic batching: concurrent requests share model calls, and take turns.

Handlers ``await batcher.submit(texts, ...)``; one collector task per event loop forms
batches (waiting at most ``wait_ms`` for company) and runs them one at a time in a
worker thread (``model_calls.py``). A batch holds at most ``max_inputs`` inputs and
about ``max_tokens`` tokens, shared between the requests in line: a long request is cut
into chunks and goes to the back of the line after each, so a short one sent meanwhile
rides in the very next batch. Between chunks, a request whose client left or whose
handler was cancelled is dropped (its later chunks never reach the model). ``stop_by``
and ``aclose(timeout)`` bound the shutdown: unanswered requests then fail with
``BatcherClosedError`` without waiting for the running call.

Concurrency: the line and the counters are touched only on the event loop thread; the
worker gets its own list of chunks and returns their outcomes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from lazyembed.config.durations import KeepAlive
from lazyembed.errors import ClientDisconnectedError, ClosedError, InvalidInputError
from lazyembed.server.chunks import BatchResult, Chunk, Outcome, Pending
from lazyembed.server.embedder_like import EmbedderLike
from lazyembed.server.model_calls import ModelCalls

__all__ = ["BatchResult", "Batcher", "BatcherClosedError", "Disconnected", "EmbedderLike"]

log = logging.getLogger("lazyembed.server")

#: ``await is_disconnected(started)``: has the client gone? ``started`` says whether the
#: request's work began (a half-closed client is served until then; see guard.py).
Disconnected = Callable[[bool], Awaitable[bool]]


class BatcherClosedError(ClosedError):
    """The server is shutting down and takes no new work."""


_EXECUTOR_PREFIX = "lazyembed-batch"


class Batcher:
    """Coalesce concurrent embedding requests into fair model batches (module docstring)."""

    def __init__(
        self,
        embedder: EmbedderLike,
        *,
        max_inputs: int,
        max_tokens: int,
        wait_ms: float,
        on_batch: Callable[[int, int], None] | None = None,
        on_load: Callable[[float], None] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        if max_inputs < 1 or max_tokens < 1 or wait_ms < 0:
            raise ValueError("max_inputs and max_tokens must be >= 1 and wait_ms >= 0")
        self.embedder = embedder
        self.max_inputs = max_inputs
        self.max_tokens = max_tokens
        self._cap: int | None = None  # the model's token limit, once known
        self.wait_s = wait_ms / 1000.0
        self._calls = ModelCalls(
            embedder, max_tokens=max_tokens, on_batch=on_batch, on_load=on_load
        )
        self._on_drop = on_drop  # per request dropped before it finished, on the loop
        self._line: deque[Pending] = deque()  # requests with inputs not yet scheduled
        self._running: list[Chunk] = []  # the batch in the worker thread (for aclose)
        self._queued_inputs = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._cutoff: asyncio.TimerHandle | None = None
        self._closing = False
        self._left_running = False  # abandon() left a model call running in its thread
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_EXECUTOR_PREFIX)
        self.dropped = 0
        self.batches = 0

    @property
    def waiting(self) -> int:
        """Requests with inputs not yet handed to the model."""
        return len(self._line)

    # ---- the loop side ------------------------------------------------------------------

    async def submit(
        self,
        texts: list[str],
        *,
        keep_alive: KeepAlive = KeepAlive.DEFAULT,
        truncate: bool = True,
        is_disconnected: Disconnected | None = None,
    ) -> BatchResult:
        """Embed ``texts`` in the next batches; raises what the model call raised."""
        if not texts:
            raise InvalidInputError("nothing to embed")
        loop = asyncio.get_running_loop()
        wakeup = self._ensure_running(loop)
        future: asyncio.Future[BatchResult] = loop.create_future()
        request = Pending(texts, keep_alive, truncate, future, loop.time(), is_disconnected)
        self._line.append(request)
        self._queued_inputs += len(texts)
        wakeup.set()
        return await future

    def _ensure_running(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        if self._closing:
            raise BatcherClosedError("the server is shutting down")
        if self._loop is not loop:
            # A new event loop (tests open one per client): the old queue died with its loop.
            self._line.clear()
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
            self._left_running = False
            self._task = None
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_EXECUTOR_PREFIX)

    def _restart(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop and not self._closing and not loop.is_closed():
            self._ensure_running(loop)

    def stop_by(self, seconds: float) -> None:
        """Fail whatever is unanswered ``seconds`` from now (call on the loop thread)."""
        loop = asyncio.get_running_loop()
        if self._cutoff is not None:
            self._cutoff.cancel()
        self._cutoff = loop.call_later(max(0.0, seconds), self.abandon)

    async def aclose(self, timeout: float | None = None) -> bool:
        """Finish what is queued, then stop; later submits raise BatcherClosedError.

        With ``timeout`` (seconds) it waits no longer: whatever is still queued or running
        then fails with BatcherClosedError, and the running chunk is left to finish in its
        thread. True when everything finished, False when work was abandoned.
        """
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        task = self._task
        if task is not None and self._loop is asyncio.get_running_loop() and not task.done():
            bound = None if timeout is None else max(0.0, timeout)
            done, _ = await asyncio.wait({task}, timeout=bound)
            if not done:
                self.abandon()
                await asyncio.wait({task})  # cancelled: ends at once (the call is shielded)
        if self._cutoff is not None:
            self._cutoff.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
        return not self._left_running

    def abandon(self) -> None:
        """Fail every unanswered request with BatcherClosedError; stop the collector."""
        self._closing = True
        error = BatcherClosedError(
            "the server is shutting down: the graceful timeout ended before this request "
            "was embedded"
        )
        requests = {id(c.request): c.request for c in self._running}
        requests.update((id(r), r) for r in self._line)
        for request in requests.values():
            if not request.future.done():
                request.future.set_exception(error)
        abandoned = bool(self._running)
        self._left_running = self._left_running or abandoned
        self._line.clear()
        self._queued_inputs = 0
        self._running = []
        if self._task is not None and not self._task.done():
            self._task.cancel()  # it waits on the running chunk (shielded; the thread goes on)
        if abandoned:
            log.warning("shutdown: not waiting for the model call still running")

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        wakeup = self._wakeup
        assert wakeup is not None
        while True:
            if not self._line:
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
        """Wait until max_inputs are queued or wait_s after the oldest request arrived."""
        deadline = self._line[0].enqueued + self.wait_s
        if self._queued_inputs >= self.max_inputs or loop.time() >= deadline:
            return
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            wakeup.set()

        timer = loop.call_at(deadline, expire)  # one timer per batch, not per arrival
        try:
            while not expired and not self._closing and self._queued_inputs < self.max_inputs:
                wakeup.clear()
                await wakeup.wait()
        finally:
            timer.cancel()

    async def _take(self) -> list[Chunk]:
        """Up to max_inputs, shared between the requests in line; drops the departed.

        Each request in line gets an equal share first (in order of the line), then the
        room left goes to those with more to embed. Requests that got nothing keep their
        place at the front; those with inputs left go to the back.
        """
        line = self._line
        cap = await self._token_cap()
        share = max(1, self.max_inputs // max(1, len(line)))
        batch: list[Chunk] = []
        untouched: list[Pending] = []
        size, tokens_left = 0, self.max_tokens
        for _ in range(len(line)):
            request = line.popleft()
            if size >= self.max_inputs or tokens_left <= 0:
                untouched.append(request)
            elif not await self._departed(request):
                wanted = min(request.remaining, share, self.max_inputs - size)
                count, tokens = request.fitting(wanted, tokens_left, cap, first=True)
                batch.append(request.take(count))
                size, tokens_left = size + count, tokens_left - tokens
        for chunk in batch:  # the room left, in the same order
            wanted = min(chunk.request.remaining, self.max_inputs - size)
            count, tokens = chunk.request.fitting(wanted, tokens_left, cap, first=False)
            size, tokens_left = size + chunk.grow(count), tokens_left - tokens
        self._queued_inputs -= sum(len(chunk.texts) for chunk in batch)
        arrived = list(line)  # submitted while a probe awaited
        line.clear()
        line.extend([*untouched, *arrived, *(c.request for c in batch if c.request.remaining)])
        return batch

    async def _token_cap(self) -> int | None:
        """The model's token limit, asked once in the worker thread (None if it fails)."""
        if self._cap is None:
            loop = asyncio.get_running_loop()
            try:
                self._cap = await loop.run_in_executor(self._executor, self._calls.max_seq_length)
            except Exception:  # the model is unavailable: its batch will say why
                return None
        return self._cap

    async def _departed(self, request: Pending) -> bool:
        """Drop ``request`` (True) if its handler was cancelled or its client left."""
        gone = request.future.done()
        if not gone and request.is_disconnected is not None:
            try:
                gone = await request.is_disconnected(request.started)
            except Exception:
                gone = False
            if gone:
                request.future.set_exception(ClientDisconnectedError("client disconnected"))
        if gone:
            self._queued_inputs -= request.remaining
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
        return gone

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[Chunk]) -> None:
        try:
            running = loop.run_in_executor(self._executor, self._calls.process, batch)
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

    def _deliver_done(self, batch: list[Chunk], done: asyncio.Future[list[Outcome]]) -> None:
        if done.cancelled():
            outcomes: list[Outcome] = [BatcherClosedError("the batch was cancelled")] * len(batch)
        elif (error := done.exception()) is not None:
            outcomes = [error] * len(batch)
        else:
            outcomes = done.result()
        self._deliver(batch, outcomes)

    def _deliver(self, batch: list[Chunk], outcomes: list[Outcome]) -> None:
        for chunk, outcome in zip(batch, outcomes, strict=True):
            request = chunk.request
            if request.future.done():  # cancelled, abandoned or failed meanwhile
                continue
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
                self._forget(request)
            elif (result := request.add(chunk, outcome)) is not None:
                request.future.set_result(result)

    def _forget(self, request: Pending) -> None:
        """A failed request's later chunks are not run."""
        if request in self._line:
            self._line.remove(request)
            self._queued_inputs -= request.remaining

    async def warmup(self, keep_alive: KeepAlive = KeepAlive.DEFAULT) -> float:
        """Load the model now with a ``keep_alive`` lease; the seconds the load took.

        Around the queue, in a thread of its own: it must not wait behind a running batch,
        and the lifecycle already makes concurrent loads one load. 0.0 when already loaded.
        """
        if self._closing:
            raise BatcherClosedError("the server is shutting down")
        return await asyncio.to_thread(self._calls.warmup, keep_alive)
