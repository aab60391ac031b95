"""sentence-transformers' similarity functions, in numpy.

The four names a model's ``config_sentence_transformers.json`` may give as
``similarity_fn_name``, with sentence-transformers' definitions: ``cosine`` (rows scaled
to unit length, a zero row stays zero), ``dot``, and the negated distances ``euclidean``
and ``manhattan`` (higher is more similar for all four). Inputs are (n, dim) or (dim,)
arrays or lists of vectors; float64 input stays float64, any other type is computed in
float32, so scores come out as sentence-transformers' do, as numpy instead of torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from lazyembed.errors import InputTypeError, InvalidInputError

Scores = npt.NDArray[np.floating[Any]]
#: sentence-transformers' ``SimilarityFunction`` values (``dot`` is also ``dot_product``'s).
SIMILARITY_FN_NAMES: Final = ("cosine", "dot", "euclidean", "manhattan")
#: torch.nn.functional.normalize's eps: a row shorter than this is divided by it instead.
_NORM_EPS: Final = 1e-12
#: Elements of one chunk's difference array in the distance functions (~64 MB in float32).
_CHUNK_ELEMENTS: Final = 16 * 2**20


def check_similarity_fn_name(name: object) -> str:
    """The name if sentence-transformers knows it; else `InvalidInputError` listing them.

    An enum member (sentence-transformers' ``SimilarityFunction``) counts by its value.
    """
    value = getattr(name, "value", name)
    if isinstance(value, str) and value in SIMILARITY_FN_NAMES:
        return value
    raise InvalidInputError(
        f"similarity_fn_name {value!r} is not one of {', '.join(SIMILARITY_FN_NAMES)}"
    )


def _as_array(embeddings: object, which: str) -> Scores:
    """A float array of the embeddings (a list of vectors is stacked)."""
    try:
        array = np.asarray(embeddings)
    except ValueError as exc:  # ragged lists
        raise InvalidInputError(f"{which}: the vectors differ in length ({exc})") from exc
    if array.dtype.kind not in "fiub":
        raise InputTypeError(f"{which} must hold numbers, not {array.dtype}")
    if array.ndim not in (1, 2):
        raise InvalidInputError(f"{which} must be a vector or (n, dim) vectors, not {array.shape}")
    return array if array.dtype == np.float64 else array.astype(np.float32, copy=False)


def _pair(a: object, b: object, *, batch: bool) -> tuple[Scores, Scores]:
    left, right = _as_array(a, "embeddings1"), _as_array(b, "embeddings2")
    if left.dtype != right.dtype:  # as torch promotes: float32 with float64 gives float64
        left, right = left.astype(np.float64), right.astype(np.float64)
    if batch:
        left, right = np.atleast_2d(left), np.atleast_2d(right)
    if left.shape[-1] != right.shape[-1]:
        raise InvalidInputError(
            f"embeddings1 has {left.shape[-1]} dimensions, embeddings2 {right.shape[-1]}"
        )
    return left, right


def _unit(rows: Scores) -> Scores:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    unit: Scores = rows / np.maximum(norms, rows.dtype.type(_NORM_EPS))
    return unit


def _cosine(a: Scores, b: Scores) -> Scores:
    return _dot(_unit(a), _unit(b))


def _dot(a: Scores, b: Scores) -> Scores:
    scores: Scores = a @ b.T
    return scores


def _distances(a: Scores, b: Scores, p: int) -> Scores:
    """Negated L1 (p=1) or L2 (p=2) distances, in chunks of rows of ``a`` so the
    (rows, n2, dim) difference stays within `_CHUNK_ELEMENTS`."""
    out = np.empty((a.shape[0], b.shape[0]), dtype=a.dtype)
    step = max(1, _CHUNK_ELEMENTS // max(1, b.shape[0] * b.shape[1]))
    for start in range(0, a.shape[0], step):
        diff = np.abs(a[start : start + step, None, :] - b[None, :, :])
        if p == 2:
            out[start : start + step] = -np.sqrt(np.square(diff).sum(axis=-1))
        else:
            out[start : start + step] = -diff.sum(axis=-1)
    return out


def _euclidean(a: Scores, b: Scores) -> Scores:
    return _distances(a, b, 2)


def _manhattan(a: Scores, b: Scores) -> Scores:
    return _distances(a, b, 1)


_MATRIX: Final[dict[str, Callable[[Scores, Scores], Scores]]] = {
    "cosine": _cosine,
    "dot": _dot,
    "euclidean": _euclidean,
    "manhattan": _manhattan,
}


def similarity(name: str, embeddings1: object, embeddings2: object) -> Scores:
    """Scores of every row of ``embeddings1`` against every row of ``embeddings2``:
    shape (n1, n2), a single vector counting as one row (sentence-transformers'
    ``similarity``)."""
    a, b = _pair(embeddings1, embeddings2, batch=True)
    return _MATRIX[check_similarity_fn_name(name)](a, b)


def similarity_pairwise(name: str, embeddings1: object, embeddings2: object) -> Scores:
    """Scores of ``embeddings1[i]`` with ``embeddings2[i]``: shape (n,), or a 0-d array
    for two single vectors (sentence-transformers' ``similarity_pairwise``)."""
    a, b = _pair(embeddings1, embeddings2, batch=False)
    if a.shape != b.shape:
        raise InvalidInputError(
            f"similarity_pairwise needs as many vectors on each side: {a.shape} vs {b.shape}"
        )
    fn = check_similarity_fn_name(name)
    if fn == "cosine":
        a, b = _unit(a), _unit(b)
    if fn in ("cosine", "dot"):
        scores = (a * b).sum(axis=-1)
    elif fn == "euclidean":
        scores = -np.sqrt(np.square(a - b).sum(axis=-1))
    else:
        scores = -np.abs(a - b).sum(axis=-1)
    return np.asarray(scores)
