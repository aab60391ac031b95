"""``lazyembed embed``: vectors of TEXT arguments and file lines, as JSON, JSONL or .npy."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from lazyembed.cli.common import stdout
from lazyembed.cli.sharing import chunk_vectors, embedder_for_embed, progress_bar
from lazyembed.cli.texts import read_lines
from lazyembed.errors import CLIError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from lazyembed.embedder import Embedder

PROGRESS_MIN_TEXTS = 1000  # files with fewer lines get no progress bar


def cmd_embed(args: argparse.Namespace) -> int:
    texts: list[str] = list(args.texts)
    if args.file is not None:
        texts.extend(read_lines(args.file))
    if not texts:
        raise CLIError("nothing to embed: pass TEXT arguments or --file FILE")
    output = _Output(args)  # before the model: a closed stdout fails now
    if output.path is None and args.format == "npy" and sys.stdout.isatty():
        raise CLIError("--format npy writes binary: pass -o FILE or redirect stdout")
    embedder = embedder_for_embed(args)  # the daemon by default (cli/sharing.py)
    try:
        quiet = args.quiet or sys.stderr is None or len(texts) < PROGRESS_MIN_TEXTS
        progress = progress_bar(len(texts), quiet)
        with progress, output as out:
            chunks = _embedded_chunks(embedder, texts, max(1, args.batch_size), progress.update)
            _write(args.format, chunks, out, len(texts), embedder)
    finally:
        embedder.close()
    return 0


def _embedded_chunks(
    embedder: Embedder, texts: list[str], size: int, done: Any
) -> Iterator[npt.NDArray[np.float32]]:
    for start in range(0, len(texts), size):
        chunk = texts[start : start + size]
        yield chunk_vectors(embedder, chunk)
        done(len(chunk))


def _write(
    fmt: str,
    chunks: Iterator[npt.NDArray[np.float32]],
    out: IO[Any],
    count: int,
    embedder: Embedder,
) -> None:
    if fmt == "npy":
        import numpy as np

        array = np.empty((count, embedder.get_embedding_dimension()), dtype=np.float32)
        start = 0
        for vectors in chunks:
            array[start : start + len(vectors)] = vectors
            start += len(vectors)
        np.save(out, array)
        return
    first = True
    if fmt == "json":
        out.write("[")
    for vectors in chunks:
        for vector in vectors:
            if fmt == "jsonl":
                out.write(_dumps(vector) + "\n")
            else:
                out.write(("" if first else ",\n") + _dumps(vector))
            first = False
    if fmt == "json":
        out.write("]\n")


def _dumps(vector: npt.NDArray[np.float32]) -> str:
    return json.dumps(vector.tolist(), separators=(",", ":"))


class _Output:
    """-o FILE (text or binary by format) or stdout; closes only what it opened."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.path: str | None = None if args.output in (None, "-") else args.output
        self.binary = args.format == "npy"
        self.stream: IO[Any] | None = None
        if self.path is None:
            self.stream = stdout(binary=self.binary, hint=": pass -o FILE")
        self.handle: IO[Any] | None = None

    def __enter__(self) -> IO[Any]:
        if self.stream is not None:
            return self.stream
        assert self.path is not None
        self.handle = open(
            self.path, "wb" if self.binary else "w", encoding=None if self.binary else "utf-8"
        )
        return self.handle

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()
