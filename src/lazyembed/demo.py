"""`make demo`: embed a few sentences and show a newcomer what lazyembed does.

Prints the vector dimension, a cosine-similarity table, and the measured time and memory
of the first load, an embed, an unload and the transparent reload.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from lazyembed import memory
from lazyembed.embedder import Embedder

SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply on Monday.",
    "Shares dropped at the start of the week.",
    "How do I reset my password?",
]


def _ms(start: float) -> str:
    return f"{(time.perf_counter() - start) * 1000:.0f} ms"


def main() -> int:
    rss_start = memory.to_mb(memory.process_rss_bytes())
    embedder = Embedder(idle_timeout="30m")
    started = time.perf_counter()
    prepared = embedder.prepare()
    how = "converted now" if prepared.converted.converted else "from the cache"
    print(f"model      {embedder.model_name} (found via {prepared.resolved.source})")
    print(f"onnx       {prepared.converted.path} ({how}, {_ms(started)})")

    started = time.perf_counter()
    vectors = embedder.embed_numpy(SENTENCES)
    first_call = _ms(started)
    print(f"dimension  {vectors.shape[1]}  (norm of each vector: {np.linalg.norm(vectors[0]):.3f})")
    print(f"first call {first_call} for {len(SENTENCES)} sentences, including the model load")

    print("\ncosine similarity")
    labels = [f"s{i + 1}" for i in range(len(SENTENCES))]
    print("     " + "".join(f"{label:>7}" for label in labels))
    similarity = vectors @ vectors.T
    for label, row in zip(labels, similarity, strict=True):
        print(f"{label:<5}" + "".join(f"{value:7.3f}" for value in row))
    for label, sentence in zip(labels, SENTENCES, strict=True):
        print(f"  {label}: {sentence}")

    started = time.perf_counter()
    embedder.embed_numpy(SENTENCES[::-1])
    print(f"\nwarm call  {_ms(started)} for {len(SENTENCES)} sentences")

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

    started = time.perf_counter()
    again = embedder.embed_numpy(SENTENCES[:1])
    state = embedder.get_memory_usage()["state"]
    same = bool(np.array_equal(again[0], vectors[0]))
    print(f"\ncache      a repeated text: {_ms(started)}, model still {state}, same vector: {same}")
    started = time.perf_counter()
    embedder.embed("A new sentence the cache has not seen.")
    print(f"reload     a new text reloaded the model transparently: {_ms(started)}")
    print("\nThe model now unloads itself after 30 idle minutes (idle_timeout).")
    embedder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
