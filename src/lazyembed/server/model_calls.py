"""The batcher's worker-thread side: one batch of chunks → model calls → outcomes.

The batch is tokenised once (untruncated, up to one past the model's limit: the usage
counts and the ``truncate=false`` check), grouped by keep-alive (one call per distinct
`KeepAlive`, in order of arrival, so each lease reaches the lifecycle as if the requests
had come one by one) and cut into calls of at most ``max_tokens`` real tokens. A failed
call fails only its requests; a validation error in a shared call is retried request by
request, so one bad request cannot fail its neighbours.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from lazyembed.config.durations import KeepAlive
from lazyembed.errors import InputTooLongError, InputTypeError, InvalidInputError
from lazyembed.server.chunks import Chunk, ChunkResult, Outcome
from lazyembed.server.embedder_like import EmbedderLike
from lazyembed.server.wire import FloatArray

log = logging.getLogger("lazyembed.server")

Segment = tuple[int, int, int]  # (chunk index in the batch, first input, end), chunk-local


class ModelCalls:
    """Runs batches on the model for the batcher (called in its worker thread only)."""

    def __init__(
        self,
        embedder: EmbedderLike,
        *,
        max_tokens: int,
        on_batch: Callable[[int, int], None] | None = None,
        on_load: Callable[[float], None] | None = None,
    ) -> None:
        self.embedder = embedder
        self.max_tokens = max_tokens
        self._on_batch = on_batch  # (inputs, requests) per model call
        self._on_load = on_load  # (seconds) per observed model load
        self._limit: int | None = None

    def process(self, batch: list[Chunk]) -> list[Outcome]:
        """Each chunk's vectors and counts, or the exception that failed it."""
        texts = [text for chunk in batch for text in chunk.texts]
        try:
            raw = self.embedder.count_tokens(texts, truncate=False)
            limit = self.max_seq_length()
        except Exception as exc:
            return [exc] * len(batch)
        failed: list[BaseException | None] = [None] * len(batch)
        counts: list[list[int]] = []
        position = 0
        for index, chunk in enumerate(batch):
            own = raw[position : position + len(chunk.texts)]
            position += len(chunk.texts)
            counts.append([min(count, limit) for count in own])
            if not chunk.truncate:
                failed[index] = _too_long(own, limit, chunk.start)
        groups: dict[KeepAlive, list[int]] = {}
        for index, chunk in enumerate(batch):
            if failed[index] is None:
                groups.setdefault(chunk.keep_alive, []).append(index)
        parts: list[list[tuple[FloatArray, float]]] = [[] for _ in batch]
        for keep_alive, indices in groups.items():
            for call in self._split(indices, counts):
                self._call(batch, call, keep_alive, parts, failed)
        outcomes: list[Outcome] = []
        for index, error in enumerate(failed):
            if error is not None:
                outcomes.append(error)
                continue
            arrays = [vectors for vectors, _ in parts[index]]
            vectors = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            loaded = sum(seconds for _, seconds in parts[index])
            outcomes.append(ChunkResult(vectors, counts[index], loaded))
        return outcomes

    def _split(self, indices: list[int], counts: list[list[int]]) -> list[list[Segment]]:
        """Model calls of at most max_tokens tokens (at least one input each)."""
        calls: list[list[Segment]] = []
        current: list[Segment] = []
        tokens = 0
        for index in indices:
            start = 0
            for position, count in enumerate(counts[index]):
                if tokens and tokens + count > self.max_tokens:
                    if position > start:
                        current.append((index, start, position))
                        start = position
                    calls.append(current)
                    current, tokens = [], 0
                tokens += count
            current.append((index, start, len(counts[index])))
        if current:
            calls.append(current)
        return calls

    def _call(
        self,
        batch: list[Chunk],
        call: list[Segment],
        keep_alive: KeepAlive,
        parts: list[list[tuple[FloatArray, float]]],
        failed: list[BaseException | None],
    ) -> None:
        call = [segment for segment in call if failed[segment[0]] is None]
        owners = list(dict.fromkeys(index for index, _, _ in call))
        if not owners:
            return
        texts = [text for index, start, end in call for text in batch[index].texts[start:end]]
        loads_before = self._loads_if_cold()
        try:
            vectors = np.ascontiguousarray(
                self.embedder.embed_numpy(texts, keep_alive=keep_alive), dtype=np.float32
            )
        except (InputTypeError, InvalidInputError) as exc:
            if len(owners) == 1:
                failed[owners[0]] = exc
            else:  # find the culprit: the others must not fail with it
                for owner in owners:
                    own = [segment for segment in call if segment[0] == owner]
                    self._call(batch, own, keep_alive, parts, failed)
            return
        except Exception as exc:
            log.warning("batcher: model call failed: %s: %s", type(exc).__name__, exc)
            for owner in owners:
                failed[owner] = exc
            return
        load_seconds = self._load_seconds(loads_before)
        if self._on_batch is not None:
            self._on_batch(len(texts), len(owners))
        position = 0
        for index, start, end in call:
            parts[index].append((vectors[position : position + end - start], load_seconds))
            position += end - start

    def warmup(self, keep_alive: KeepAlive) -> float:
        """Load with a ``keep_alive`` lease; the seconds the load took (0.0 if warm)."""
        loads_before = self._loads_if_cold()
        self.embedder.warmup(keep_alive=keep_alive)
        return self._load_seconds(loads_before)

    def max_seq_length(self) -> int:
        """The model's token limit (cached; the first call may prepare the model)."""
        if self._limit is None:
            self._limit = self.embedder.get_max_tokens()
        return self._limit

    def _loads_if_cold(self) -> int | None:
        """The load counter before a call that will load the model (None when warm)."""
        try:
            if self.embedder.is_loaded:
                return None
            return self.embedder.memory_report(events=False).loads
        except Exception:
            return None

    def _load_seconds(self, loads_before: int | None) -> float:
        """How long this call's model load took (reads the report only after a cold call)."""
        if loads_before is None:
            return 0.0
        try:
            report = self.embedder.memory_report(events=False)
        except Exception:
            return 0.0
        if report.loads <= loads_before:
            return 0.0  # answered from the cache, or another thread loaded it
        seconds = (report.last_load_ms or 0.0) / 1000.0
        if self._on_load is not None:
            self._on_load(seconds)
        return seconds


def _too_long(raw_counts: list[int], limit: int, offset: int) -> InputTooLongError | None:
    """truncate=false: refuse inputs that do not fit, as Ollama does (exactly fits: ok)."""
    for position, count in enumerate(raw_counts):
        if count > limit:
            return InputTooLongError(
                f"input {offset + position} is longer than the model's limit of {limit} "
                "tokens; send shorter text or truncate: true"
            )
    return None
