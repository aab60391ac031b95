"""Reading a BERT-family checkpoint (BERT, XLM-RoBERTa): its ``model.safetensors`` tensors.

Everything here is numpy: the tensors come out float32, shape-checked against the config
and laid out for the graph builder (``bert_graph.py``), which never sees a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lazyembed.errors import ModelConversionError
from lazyembed.models.encoder_config import EncoderConfig, read_config

WEIGHTS_FILE = "model.safetensors"

FloatArray = npt.NDArray[np.float32]


class _Weights:
    """Tensors of a checkpoint, with or without a ``bert.``/``roberta.`` prefix, shape-checked."""

    def __init__(self, path: Path) -> None:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        self._path = path
        try:
            tensors = load_file(str(path))
        except FileNotFoundError as exc:
            raise ModelConversionError(f"{path} is missing") from exc
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelConversionError(f"{path} is not a readable safetensors file: {exc}") from exc
        prefixes = ("bert.", "roberta.", "model.", "")
        self._tensors: dict[str, npt.NDArray[Any]] = {}
        # Prefer un-prefixed names; strip a known prefix otherwise (BertForX checkpoints).
        for name, value in tensors.items():
            for prefix in prefixes:
                if name.startswith(prefix):
                    self._tensors.setdefault(name[len(prefix) :], value)
                    break

    def get(self, name: str, shape: tuple[int | None, ...]) -> FloatArray:
        """The tensor as contiguous float32; ``None`` in ``shape`` matches any size."""
        value = self._tensors.get(name)
        if value is None:
            raise ModelConversionError(
                f"tensor {name!r} (or 'bert.{name}') missing from {self._path}; "
                "is this a BERT-family checkpoint?"
            )
        if len(value.shape) != len(shape) or any(
            want is not None and got != want for got, want in zip(value.shape, shape, strict=False)
        ):
            raise ModelConversionError(
                f"tensor {name!r} in {self._path} has shape {tuple(value.shape)}, "
                f"config.json implies {shape}"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise ModelConversionError(f"tensor {name!r} has non-float dtype {value.dtype}")
        return np.ascontiguousarray(value, dtype=np.float32)


@dataclass(frozen=True)
class Layer:
    wq: FloatArray  # [hidden, hidden] laid out for x @ w
    bq: FloatArray
    wk: FloatArray
    bk: FloatArray
    wv: FloatArray
    bv: FloatArray
    wo: FloatArray
    bo: FloatArray
    ln1_g: FloatArray
    ln1_b: FloatArray
    w1: FloatArray  # [hidden, intermediate]
    b1: FloatArray
    w2: FloatArray  # [intermediate, hidden]
    b2: FloatArray
    ln2_g: FloatArray
    ln2_b: FloatArray


@dataclass(frozen=True)
class Bert:
    cfg: EncoderConfig
    word: FloatArray  # [vocab, hidden]
    #: Position embeddings with the token-type-0 row folded in (single-sentence input:
    #: every token adds exactly one position row and the type-0 row).
    position: FloatArray  # [max_positions, hidden]
    ln_g: FloatArray
    ln_b: FloatArray
    layers: tuple[Layer, ...]


def _load_layer(w: _Weights, cfg: EncoderConfig, n: int) -> Layer:
    h, i = cfg.hidden, cfg.intermediate

    def lin(name: str, n_out: int, n_in: int) -> tuple[FloatArray, FloatArray]:
        # torch Linear stores [out, in]; ONNX MatMul wants [in, out].
        weight = np.ascontiguousarray(w.get(f"{name}.weight", (n_out, n_in)).T)
        return weight, w.get(f"{name}.bias", (n_out,))

    p = f"encoder.layer.{n}"
    wq, bq = lin(f"{p}.attention.self.query", h, h)
    wk, bk = lin(f"{p}.attention.self.key", h, h)
    wv, bv = lin(f"{p}.attention.self.value", h, h)
    wo, bo = lin(f"{p}.attention.output.dense", h, h)
    w1, b1 = lin(f"{p}.intermediate.dense", i, h)
    w2, b2 = lin(f"{p}.output.dense", h, i)
    return Layer(
        wq, bq, wk, bk, wv, bv, wo, bo,
        w.get(f"{p}.attention.output.LayerNorm.weight", (h,)),
        w.get(f"{p}.attention.output.LayerNorm.bias", (h,)),
        w1, b1, w2, b2,
        w.get(f"{p}.output.LayerNorm.weight", (h,)),
        w.get(f"{p}.output.LayerNorm.bias", (h,)),
    )  # fmt: skip


def load_bert(model_dir: Path) -> Bert:
    """The config and every tensor of the checkpoint in ``model_dir``."""
    cfg = read_config(model_dir)
    w = _Weights(model_dir / WEIGHTS_FILE)
    h = cfg.hidden
    layers = tuple(_load_layer(w, cfg, n) for n in range(cfg.layers))
    type_table = w.get("embeddings.token_type_embeddings.weight", (None, h))
    position = w.get("embeddings.position_embeddings.weight", (cfg.max_positions, h))
    return Bert(
        cfg=cfg,
        word=w.get("embeddings.word_embeddings.weight", (cfg.vocab, h)),
        position=(position + type_table[0]).astype(np.float32),
        ln_g=w.get("embeddings.LayerNorm.weight", (h,)),
        ln_b=w.get("embeddings.LayerNorm.bias", (h,)),
        layers=layers,
    )
