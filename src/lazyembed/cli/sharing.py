"""How ``lazyembed embed`` reaches a model: through the user's daemon by default.

The command uses ``share="always"`` unless ``--share`` or the ``share`` setting (env
``LAZYEMBED_SHARE``, config file) says otherwise: a warm daemon answers without this
process importing numpy, ONNX Runtime or the model, which is most of an in-process run's
time. With the daemon, vectors stay lists of floats (`chunk_vectors`), and the progress
bar's module is imported only when a bar may show (`progress_bar`).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from lazyembed.cli.common import settings_for
from lazyembed.config import Share

if TYPE_CHECKING:
    from lazyembed.embedder import Embedder

#: ``lazyembed embed``'s share mode when neither --share nor the setting gives one.
CLI_DEFAULT_SHARE: Share = "always"


def embedder_for_embed(args: argparse.Namespace) -> Embedder:
    """The Embedder of ``lazyembed embed``: shared (the daemon) or in-process."""
    from lazyembed.daemon.shared import shared_embedder_for
    from lazyembed.embedder import Embedder

    settings = settings_for(args, share=getattr(args, "share", None))
    embedder: Embedder = shared_embedder_for(
        settings, CLI_DEFAULT_SHARE, lambda s: Embedder(settings=s)
    )
    return embedder


class _Row(list[float]):
    """One vector as a list, readable like a numpy row (``tolist()``)."""

    def tolist(self) -> list[float]:
        return self


def chunk_vectors(embedder: Embedder, chunk: list[str]) -> Any:
    """The vectors of ``chunk``: a float32 array in-process; from the daemon, rows that
    are lists (``len``, iteration, ``tolist()`` and numpy assignment work on both)."""
    if getattr(embedder, "shared", False):
        return [_Row(row) for row in embedder.embed(chunk)]
    return embedder.embed_numpy(chunk)


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


def progress_bar(total: int, quiet: bool) -> Any:
    """A tqdm bar on stderr (shown on a terminal), or nothing at all when ``quiet``."""
    if quiet:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit="text", file=sys.stderr, disable=None)
