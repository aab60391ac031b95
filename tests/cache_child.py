"""Child process of the cache tests: writes to a cache store and reports as it goes.

Usage: python cache_child.py PATH FINGERPRINT PREFIX COUNT SHARED BATCH [--forever]

Writes COUNT texts "<PREFIX>-<i>" plus SHARED texts "shared-<i>" (in reverse order, so two
children overlap while contending) in batches of BATCH, and prints one line
"done <text> <text> ..." after each put_many has returned. With --forever it keeps writing
new batches until killed. The last line is "stats <json>".
"""

from __future__ import annotations

import hashlib
import json
import sys
from itertools import count

import numpy as np

from lazyembed.cache import EmbeddingCache

DIM = 384


def vector_for(text: str, dim: int = DIM) -> np.ndarray:
    """A deterministic random float32 vector per text, so overlapping writers agree."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(seed).standard_normal(dim, dtype=np.float32)


def main(argv: list[str]) -> None:
    path, fingerprint, prefix, n, shared, batch = argv[:6]
    forever = "--forever" in argv
    texts = [f"{prefix}-{i}" for i in range(int(n))]
    texts += [f"shared-{i}" for i in reversed(range(int(shared)))]
    if forever:
        texts = (f"{prefix}-{i}" for i in count())  # type: ignore[assignment]
    cache = EmbeddingCache(fingerprint, memory_bytes=0, sqlite_path=path)
    size = int(batch)
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == size:
            cache.put_many(chunk, np.stack([vector_for(t) for t in chunk]))
            print("done", *chunk, flush=True)
            chunk = []
    if chunk:
        cache.put_many(chunk, np.stack([vector_for(t) for t in chunk]))
        print("done", *chunk, flush=True)
    print("stats", json.dumps(cache.stats()), flush=True)
    cache.close()


if __name__ == "__main__":
    main(sys.argv[1:])
