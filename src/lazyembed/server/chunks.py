"""A request in the batcher (`Pending`), the chunks it is cut into, and its result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from lazyembed.config.durations import KeepAlive
from lazyembed.server.wire import FloatArray


@dataclass(frozen=True)
class BatchResult:
    """One request's vectors, token counts and the model load it waited for."""

    vectors: FloatArray  # (n, dim) float32, C-contiguous, in the request's input order
    token_counts: list[int]
    load_seconds: float  # time the model spent loading during this request's calls


@dataclass(frozen=True)
class ChunkResult:
    """What the model gave for one chunk."""

    vectors: FloatArray
    counts: list[int]
    load_seconds: float


Outcome = ChunkResult | BaseException


@dataclass(eq=False)
class Pending:
    """A submitted request: its texts, what is scheduled and what came back so far."""

    texts: list[str]
    keep_alive: KeepAlive
    truncate: bool
    future: asyncio.Future[BatchResult]
    enqueued: float
    is_disconnected: Callable[[bool], Awaitable[bool]] | None
    scheduled: int = 0  # inputs handed to a batch
    parts: list[ChunkResult] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return len(self.texts) - self.scheduled

    @property
    def started(self) -> bool:
        return self.scheduled > 0

    def fitting(self, count: int, budget: int, cap: int | None, *, first: bool) -> tuple[int, int]:
        """How many of the next ``count`` inputs fit ``budget`` tokens, and their tokens.

        Tokens are estimated from characters (a WordPiece token covers at least one, plus
        [CLS] and [SEP]), capped at the model's limit ``cap``; the worker splits model
        calls by the real counts. ``first``: at least one input, whatever the budget.
        """
        taken = used = 0
        for text in self.texts[self.scheduled : self.scheduled + count]:
            tokens = len(text) + 2 if cap is None else min(len(text) + 2, cap)
            if used + tokens > budget and (taken or not first):
                break
            taken += 1
            used += tokens
        return taken, used

    def take(self, count: int) -> Chunk:
        """The next ``count`` inputs as a chunk."""
        start = self.scheduled
        self.scheduled += count
        return Chunk(self, start, self.texts[start : start + count])

    def add(self, chunk: Chunk, result: ChunkResult) -> BatchResult | None:
        """Record a chunk's result; the whole result once the last chunk is in."""
        self.parts.append(result)
        if self.remaining or sum(len(p.counts) for p in self.parts) < len(self.texts):
            return None
        parts = self.parts
        arrays = [part.vectors for part in parts]
        vectors = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        counts = [count for part in parts for count in part.counts]
        return BatchResult(
            np.ascontiguousarray(vectors), counts, sum(p.load_seconds for p in parts)
        )


@dataclass(eq=False)
class Chunk:
    """Consecutive inputs of one request, embedded in one batch."""

    request: Pending
    start: int  # index of the first input in the request
    texts: list[str]

    def grow(self, count: int) -> int:
        """Take the request's next ``count`` inputs into this chunk (its last); ``count``."""
        request = self.request
        assert request.scheduled == self.start + len(self.texts), "not the request's last chunk"
        request.scheduled += count
        self.texts = request.texts[self.start : request.scheduled]
        return count

    @property
    def keep_alive(self) -> KeepAlive:
        return self.request.keep_alive

    @property
    def truncate(self) -> bool:
        return self.request.truncate
