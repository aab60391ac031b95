"""Single-text throughput of the embedding cache alone (no model): memory and SQLite.

Why: issue 6 asks for >= 100,000 single-text hits/s from memory and >= 20,000/s from
SQLite through the whole embed() path; this isolates the cache's share of that budget.
Not run in CI (timings on a shared machine are noisy); run it by hand:

    .venv/bin/python bench/cache_bench.py [--seconds 1.0] [--json]

Each figure is the best of three timed runs of `--seconds` each.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lazyembed.cache import EmbeddingCache

DIM = 384
N_TEXTS = 2_000


def rate(call: Callable[[int], object], seconds: float) -> float:
    """Calls per second of `call(i)`, best of three runs of about `seconds` each."""
    best = 0.0
    for _ in range(3):
        done = 0
        start = time.perf_counter()
        while True:
            for i in range(200):
                call(done + i)
            done += 200
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        best = max(best, done / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    texts = [f"note {i}: a sentence someone embeds again and again" for i in range(N_TEXTS)]
    vectors = np.random.default_rng(0).standard_normal((N_TEXTS, DIM), dtype=np.float32)
    singles = [[t] for t in texts]
    results: dict[str, float] = {}

    memory = EmbeddingCache("bench", memory_bytes=64 << 20)
    memory.put_many(texts, vectors)
    results["memory_hit_per_s"] = rate(
        lambda i: memory.get_many(singles[i % N_TEXTS]), args.seconds
    )
    results["memory_miss_per_s"] = rate(lambda i: memory.get_many([f"miss {i}"]), args.seconds)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache.sqlite"
        store = EmbeddingCache("bench", memory_bytes=0, sqlite_path=path)
        store.put_many(texts, vectors)
        results["sqlite_hit_per_s"] = rate(
            lambda i: store.get_many(singles[i % N_TEXTS]), args.seconds
        )
        results["sqlite_miss_per_s"] = rate(lambda i: store.get_many([f"miss {i}"]), args.seconds)
        one = vectors[:1]
        results["sqlite_put_per_s"] = rate(
            lambda i: store.put_many([f"new {i}"], one), args.seconds
        )
        store.close()

    if args.json:
        print(json.dumps(results))
    else:
        for name, value in results.items():
            print(f"{name:>20}: {value:>12,.0f}  ({1e6 / value:.1f} µs/call)")


if __name__ == "__main__":
    main()
