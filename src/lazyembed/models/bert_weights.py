"""Reading a BERT-family checkpoint (BERT, XLM-RoBERTa): its ``model.safetensors`` tensors.

Everything here is numpy: the tensors come out float32, shape-checked against the config
and laid out for the graph builder (``bert_graph.py``), which never sees a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lazyembed.errors import ModelConversionError
from lazyembed.models.checkpoint import WEIGHTS_FILE, Checkpoint, FloatArray
from lazyembed.models.encoder_config import EncoderConfig, read_config

__all__ = ["WEIGHTS_FILE", "Bert", "FloatArray", "Layer", "load_bert"]


class _Weights:
    """Tensors of a checkpoint, with or without a ``bert.``/``roberta.`` prefix, shape-checked."""

    def __init__(self, model_dir: Path) -> None:
        self._ckpt = Checkpoint(model_dir, prefixes=("bert.", "roberta.", "model."))

    def get(self, name: str, shape: tuple[int | None, ...]) -> FloatArray:
        """The tensor as contiguous float32; ``None`` in ``shape`` matches any size."""
        if not self._ckpt.has(name):
            raise ModelConversionError(
                f"tensor {name!r} (or 'bert.{name}') missing from {self._ckpt.model_dir}; "
                "is this a BERT-family checkpoint?"
            )
        return self._ckpt.get(name, shape)

    def close(self) -> None:
        self._ckpt.close()


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
    w = _Weights(model_dir)
    try:
        return _load(w, cfg)
    finally:
        w.close()


def _load(w: _Weights, cfg: EncoderConfig) -> Bert:
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
