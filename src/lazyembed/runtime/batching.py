"""Run planning: which length-sorted texts go through ONNX Runtime together.

A run is bounded three ways: by text count (the batch size), by padding (a much longer
text starts a new run) and by padded tokens, since a run's working memory (attention
scores above all) grows with rows x width², not with the number of texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

#: A run is cut when the next (sorted) text is longer than its first x PAD_GROWTH + PAD_SLACK.
PAD_GROWTH = 1.5
PAD_SLACK = 8
#: A run holds at most this many padded tokens (rows x width), however short its texts.
MAX_RUN_TOKENS = 2048


def plan_batches(
    sorted_lengths: Sequence[int], batch_size: int, max_tokens: int = MAX_RUN_TOKENS
) -> list[tuple[int, int]]:
    """Cut length-sorted texts into runs of at most `batch_size` with little padding.

    A run is cut early when the next text is much longer than the run's first
    (> `PAD_GROWTH` x + `PAD_SLACK` tokens): the short ones would otherwise be padded to
    its length. A call of 32 random sentences, as a server forms them, then runs as a few
    uniform runs instead of one run padded to its longest sentence. A run also stops
    before its padded size (rows x its longest text) would pass `max_tokens`; a single
    text always makes a run.
    """
    plan: list[tuple[int, int]] = []
    start, n, size = 0, len(sorted_lengths), max(1, batch_size)
    while start < n:
        limit = sorted_lengths[start] * PAD_GROWTH + PAD_SLACK
        end = start + 1
        while (
            end < n
            and end - start < size
            and sorted_lengths[end] <= limit
            and (end - start + 1) * sorted_lengths[end] <= max_tokens
        ):
            end += 1
        plan.append((start, end))
        start = end
    return plan


def padded_inputs(
    encodings: Sequence[Any],
    rows: Sequence[int] | npt.NDArray[np.intp],
    width: int,
    *,
    left: bool = False,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """input_ids and attention_mask of the chosen encodings, zero-padded to `width` on
    the right (or, ``left``, on the left: a decoder's ``padding_side: "left"``)."""
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for row, index in enumerate(rows):
        token_ids = encodings[index].ids
        kept = slice(width - len(token_ids), width) if left else slice(0, len(token_ids))
        ids[row, kept] = token_ids
        mask[row, kept] = 1
    return ids, mask
