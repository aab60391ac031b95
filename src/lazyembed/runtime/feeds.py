"""What an ONNX graph's inputs get, filled from a run's token ids and attention mask.

A converted model takes ``input_ids`` and ``attention_mask``; a model's own export may
also take ``token_type_ids`` (zeros: one segment), ``position_ids`` (counted from the
mask, so left and right padding both number each text's tokens from 0, as transformers
does) and, for decoder exports, ``past_key_values.*`` (an empty cache: shape (batch,
heads, 0, head_dim), the fixed sizes and dtype read from the graph). The graph was
checked when the model was prepared (``models/onnx_export.py``); an input of another
name here is a `ModelLoadError`. Engine-independent: a backend describes its graph's
inputs as `GraphInput` values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lazyembed.errors import ModelLoadError

IdArray = npt.NDArray[np.int64]
Dim = int | str | None

#: ONNX Runtime's type names -> numpy dtypes.
ORT_DTYPES = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(bool)": np.bool_,
}
#: The two inputs every model takes; a graph with exactly these needs no other work.
PLAIN_INPUTS = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class GraphInput:
    """One input of a graph: its name, shape (ints fixed, names or None free) and dtype."""

    name: str
    shape: tuple[Dim, ...]
    dtype: type[np.generic]


def position_ids(mask: IdArray) -> IdArray:
    """Each kept token's position among its text's kept tokens; padding gets 1
    (transformers' ``cumsum(mask) - 1``, masked positions filled with 1)."""
    positions: IdArray = np.cumsum(mask, axis=1) - 1
    positions[mask == 0] = 1
    return positions


def _empty_cache(spec: GraphInput, batch: int) -> npt.NDArray[np.generic]:
    """A past key or value with no past: batch rows, the graph's fixed sizes, 0 elsewhere."""
    shape = [
        batch if axis == 0 else (dim if isinstance(dim, int) else 0)
        for axis, dim in enumerate(spec.shape)
    ]
    return np.zeros(shape, dtype=spec.dtype)


def make_feeds(
    inputs: Sequence[GraphInput], ids: IdArray, mask: IdArray
) -> dict[str, npt.NDArray[np.generic]]:
    """The feed of every graph input for one (padded) run."""
    feeds: dict[str, npt.NDArray[np.generic]] = {}
    for spec in inputs:
        if spec.name == "input_ids":
            value: npt.NDArray[np.generic] = ids
        elif spec.name == "attention_mask":
            value = mask
        elif spec.name == "token_type_ids":
            value = np.zeros_like(ids)
        elif spec.name == "position_ids":
            value = position_ids(mask)
        elif spec.name.startswith("past_key_values"):
            feeds[spec.name] = _empty_cache(spec, ids.shape[0])
            continue
        else:
            raise ModelLoadError(
                f"the model's graph takes input {spec.name!r}, which lazyembed cannot fill"
            )
        feeds[spec.name] = value if value.dtype == spec.dtype else value.astype(spec.dtype)
    return feeds
