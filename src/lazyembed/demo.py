"""`make demo`: embed a few sentences and show a newcomer what lazyembed does.

Prints the vector dimension, a cosine-similarity table, and the measured time and memory
of the first load, a warm call (new sentences), a cache hit, an unload and the
transparent reload. Cache hits and model calls are counted, not assumed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from lazyembed import memory
from lazyembed.embedder import Embedder

SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply on Monday.",
    "Shares dropped at the start of the week.",
    "How do I reset my password?",
]
# The warm call needs texts the cache has not seen, or it would time the cache.
NEW_SENTENCES = [
    "The train to Lyon leaves at noon.",
    "Fresh bread smells wonderful in the morning.",
    "My laptop battery drains too quickly.",
    "The river froze during the long winter.",
    "She plays the violin in an orchestra.",
]

T = TypeVar("T")


def _timed(call: Callable[[], T]) -> tuple[T, str]:
    started = time.perf_counter()
    result = call()
    ms = (time.perf_counter() - started) * 1000
    return result, f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def _cache_counts(embedder: Embedder) -> tuple[int, int] | None:
    """(hits, misses) of the embedding cache so far, or None when it is off."""
    stats = embedder.memory_report(events=False).cache
    return None if stats is None else (int(stats["hits"]), int(stats["misses"]))


def _counted(embedder: Embedder, texts: list[str]) -> tuple[npt.NDArray[np.float32], str, str]:
    """Embed ``texts``: the vectors, the time taken, and who answered (measured)."""
    before = _cache_counts(embedder)
    vectors, took = _timed(lambda: embedder.embed_numpy(texts))
    after = _cache_counts(embedder)
    if before is None or after is None:
        return vectors, took, "the embedding cache is off in the settings"
    hits, computed = after[0] - before[0], after[1] - before[1]
    who = "model not called" if computed == 0 else f"{computed} computed by the model"
    return vectors, took, f"{hits} cache hit{'' if hits == 1 else 's'}, {who}"


def _show_similarity(vectors: npt.NDArray[np.float32]) -> None:
    print("\ncosine similarity")
    labels = [f"s{i + 1}" for i in range(len(SENTENCES))]
    print("     " + "".join(f"{label:>7}" for label in labels))
    for label, row in zip(labels, vectors @ vectors.T, strict=True):
        print(f"{label:<5}" + "".join(f"{value:7.3f}" for value in row))
    for label, sentence in zip(labels, SENTENCES, strict=True):
        print(f"  {label}: {sentence}")


def _show_memory(embedder: Embedder, rss_start: float) -> None:
    usage = embedder.get_memory_usage()
    print("\nmemory (measured with psutil)")
    print(f"  process RSS before anything          {rss_start:8.1f} MB")
    print(f"  model loaded: RSS it added            {usage['model_mb']:8.1f} MB")
    print(f"  process RSS now                       {usage['process_rss_mb']:8.1f} MB")
    embedder.unload_model()
    usage = embedder.get_memory_usage()
    last = usage["last_unload"]
    print(
        f"  unload_model(): returned to the OS    {last['returned_mb']:8.1f} MB"
        f" in {last['ms']:.0f} ms"
    )
    print(f"  process RSS after unload              {usage['process_rss_mb']:8.1f} MB")


def main() -> int:
    rss_start = memory.to_mb(memory.process_rss_bytes())
    # No persistent cache: a cache left by an earlier run would answer the warm call.
    embedder = Embedder(idle_timeout="30m", cache_persistent=False, share="never")
    try:
        prepared, took = _timed(embedder.prepare)
        how = "converted now" if prepared.converted.converted else "from the cache"
        print(f"model      {embedder.model_name} (found via {prepared.resolved.source})")
        print(f"onnx       {prepared.converted.path} ({how}, {took})")

        vectors, took = _timed(lambda: embedder.embed_numpy(SENTENCES))
        norm = np.linalg.norm(vectors[0])
        print(f"dimension  {vectors.shape[1]}  (norm of each vector: {norm:.3f})")
        print(f"first call {took} for {len(SENTENCES)} sentences, including the model load")
        _show_similarity(vectors)

        _, took, who = _counted(embedder, NEW_SENTENCES)
        print(f"\nwarm call  {took} for {len(NEW_SENTENCES)} new sentences ({who})")
        _, took, who = _counted(embedder, SENTENCES)
        print(f"cache hit  {took} for the {len(SENTENCES)} first sentences again ({who})")

        _show_memory(embedder, rss_start)

        again, took, who = _counted(embedder, SENTENCES[:1])
        state = embedder.get_memory_usage()["state"]
        same = bool(np.array_equal(again[0], vectors[0]))
        print(f"\nunloaded   a repeated text: {took} ({who}), model still {state}, same: {same}")
        _, took = _timed(lambda: embedder.embed("A new sentence the cache has not seen."))
        print(f"reload     a new text reloaded the model transparently: {took}")
        print("\nThe model now unloads itself after 30 idle minutes (idle_timeout).")
    finally:
        embedder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
