"""``encode(precision=...)``: sentence-transformers' ``quantize_embeddings``, in numpy.

The same operations in the same order and dtypes, so the same float vectors give the
same bytes: ``int8``/``uint8`` cut each dimension's range over the call's own vectors
into 255 steps (a single vector has no range: refused, as sentence-transformers does),
``binary``/``ubinary`` pack the signs (> 0) eight to a byte, ``binary`` shifted by -128
into int8.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from lazyembed.errors import InvalidInputError

log = logging.getLogger("lazyembed")

#: sentence-transformers' ALLOWED_PRECISIONS.
PRECISIONS: Final = ("float32", "int8", "uint8", "binary", "ubinary")
Quantized = npt.NDArray[Any]


def check_precision(precision: object) -> str:
    """The precision if sentence-transformers knows it (None means float32)."""
    if precision is None:
        return "float32"
    if isinstance(precision, str) and precision in PRECISIONS:
        return precision
    raise InvalidInputError(
        f"precision {precision!r} is not supported, must be one of {', '.join(PRECISIONS)}"
    )


def quantize_embeddings(embeddings: npt.NDArray[np.float32], precision: str) -> Quantized:
    """(n, dim) float32 vectors at ``precision``; ranges for int8/uint8 come from them.

    Returns float32 (n, dim), int8/uint8 (n, dim), or int8/uint8 (n, ceil(dim / 8)).
    """
    precision = check_precision(precision)
    if embeddings.ndim == 2 and embeddings.shape[0] == 0:
        dim = embeddings.shape[1]
        width = (dim + 7) // 8 if precision.endswith("binary") else dim
        signed = precision in ("int8", "binary")
        return np.zeros((0, width), dtype=np.int8 if signed else np.uint8)
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision.endswith("int8"):
        if embeddings.ndim == 1 or embeddings.shape[0] == 1:
            raise InvalidInputError(
                f"precision={precision!r} takes its ranges from the vectors of the call: "
                "it needs at least two texts (sentence-transformers refuses one too)"
            )
        if embeddings.shape[0] < 100:
            log.warning(
                "precision=%r: quantization ranges from only %d vectors; more vectors give "
                "steadier buckets",
                precision,
                embeddings.shape[0],
            )
        ranges = np.vstack((np.min(embeddings, axis=0), np.max(embeddings, axis=0)))
        ranges = ranges.astype(np.float32, copy=False)
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        if precision == "uint8":
            unsigned: Quantized = buckets.astype(np.uint8)
            return unsigned
        offset: Quantized = (buckets - 128).astype(np.int8)
        return offset
    packed: Quantized = np.packbits(embeddings > 0, axis=-1)
    if precision == "binary":
        shifted: Quantized = (packed - 128).astype(np.int8)
        return shifted
    return packed
