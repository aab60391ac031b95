"""Pooling token vectors into one sentence vector, as sentence-transformers' Pooling does.

Modes: ``mean``, ``cls``, ``max``, ``mean_sqrt_len_tokens``, ``weightedmean``,
``lasttoken``; several at once are concatenated in that module's order. Inputs are
padded runs (the runtime's, right- or left-padded): ``hidden`` (batch, seq, dim) and
``mask`` (batch, seq); positions count from each text's first kept token, so the side
changes nothing. ``prompt_lengths`` (``include_prompt: false``) takes each text's first
prompt tokens out of the pooling mask only; the encoder still attended to them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: sentence-transformers' order when several modes are on (their outputs concatenated).
ORDER = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def pool(
    hidden: npt.NDArray[np.floating],
    mask: IntArray,
    modes: Sequence[str],
    *,
    normalize: bool,
    prompt_lengths: IntArray | None = None,
) -> FloatArray:
    """One vector per row: the modes' poolings concatenated, then L2-normalised if asked."""
    hidden = hidden.astype(np.float32, copy=False)
    weights = mask.astype(np.float32)
    positions = _positions(mask)
    if prompt_lengths is not None:
        weights = weights * (positions >= prompt_lengths[:, None])
    parts = [_POOLERS[mode](hidden, weights, positions) for mode in ORDER if mode in modes]
    pooled = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    pooled = np.ascontiguousarray(pooled, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        pooled /= np.maximum(norms, 1e-12)
    return pooled


def _positions(mask: IntArray) -> IntArray:
    """Each column's position counted from the row's first kept token (0 there; left
    padding gets negative positions, which its zero mask ignores)."""
    first = np.argmax(mask > 0, axis=1)
    positions: IntArray = np.arange(mask.shape[1])[None, :] - first[:, None]
    return positions


def _summed(hidden: FloatArray, weights: FloatArray) -> FloatArray:
    summed: FloatArray = np.matmul(weights[:, None, :], hidden)[:, 0, :]
    return summed


def _mean(hidden: FloatArray, weights: FloatArray, _: IntArray) -> FloatArray:
    counts = np.maximum(weights.sum(axis=1, keepdims=True), np.float32(1e-9))
    mean: FloatArray = _summed(hidden, weights) / counts
    return mean


def _mean_sqrt_len(hidden: FloatArray, weights: FloatArray, _: IntArray) -> FloatArray:
    counts = np.maximum(weights.sum(axis=1, keepdims=True), np.float32(1e-9))
    mean: FloatArray = _summed(hidden, weights) / np.sqrt(counts)
    return mean


def _cls(hidden: FloatArray, weights: FloatArray, _: IntArray) -> FloatArray:
    """The first token the pooling mask keeps ([CLS], or the first after an excluded
    prompt)."""
    first = np.argmax(weights > 0, axis=1)
    picked: FloatArray = hidden[np.arange(hidden.shape[0]), first]
    return picked


def _max(hidden: FloatArray, weights: FloatArray, _: IntArray) -> FloatArray:
    masked: FloatArray = np.where(weights[:, :, None] > 0, hidden, np.float32(-np.inf))
    maxed: FloatArray = masked.max(axis=1)
    return maxed


def _weighted_mean(hidden: FloatArray, weights: FloatArray, first: IntArray) -> FloatArray:
    """Position i (from 1, from the text's first token) weighs i: later tokens count more."""
    positions = (first + 1).astype(np.float32)
    weighted = weights * positions
    totals = np.maximum(weighted.sum(axis=1, keepdims=True), np.float32(1e-9))
    mean: FloatArray = _summed(hidden, weighted) / totals
    return mean


def _last_token(hidden: FloatArray, weights: FloatArray, _: IntArray) -> FloatArray:
    """The last position the mask keeps (zeros when it keeps none, as ST's gather of a
    masked row gives)."""
    kept = weights > 0
    last = hidden.shape[1] - 1 - np.argmax(kept[:, ::-1], axis=1)
    rows = np.arange(hidden.shape[0])
    picked: FloatArray = hidden[rows, last] * kept[rows, last][:, None]
    return picked


_POOLERS = {
    "mean": _mean,
    "cls": _cls,
    "max": _max,
    "mean_sqrt_len_tokens": _mean_sqrt_len,
    "weightedmean": _weighted_mean,
    "lasttoken": _last_token,
}
assert set(_POOLERS) == set(ORDER)
