"""Reading a BERT-family checkpoint: ``config.json`` and the ``model.safetensors`` tensors.

Everything here is numpy: the tensors come out float32, shape-checked against the config
and laid out for the graph builder (``bert_graph.py``), which never sees a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lazyembed.errors import ModelConversionError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SUPPORTED_MODEL_TYPES = frozenset({"bert"})

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class BertConfig:
    model_type: str
    hidden: int
    heads: int
    layers: int
    intermediate: int
    eps: float
    vocab: int
    max_positions: int


def read_config(model_dir: Path) -> BertConfig:
    """The architecture fields of ``config.json``; an unsupported one is refused here."""
    path = model_dir / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelConversionError(f"{path} is missing; cannot convert {model_dir}") from exc
    except (OSError, ValueError) as exc:
        raise ModelConversionError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelConversionError(f"{path} must hold a JSON object")
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelConversionError(
            f"unsupported architecture model_type={model_type!r} in {path}; "
            f"the converter supports {sorted(SUPPORTED_MODEL_TYPES)}"
        )
    act = raw.get("hidden_act", "gelu")
    if act != "gelu":
        raise ModelConversionError(
            f"unsupported hidden_act={act!r} in {path}; only exact 'gelu' (erf) is supported"
        )
    pos_type = raw.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise ModelConversionError(
            f"unsupported position_embedding_type={pos_type!r} in {path}; only 'absolute'"
        )
    try:
        cfg = BertConfig(
            model_type=str(model_type),
            hidden=int(raw["hidden_size"]),
            heads=int(raw["num_attention_heads"]),
            layers=int(raw["num_hidden_layers"]),
            intermediate=int(raw["intermediate_size"]),
            eps=float(raw.get("layer_norm_eps", 1e-12)),
            vocab=int(raw["vocab_size"]),
            max_positions=int(raw.get("max_position_embeddings", 512)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelConversionError(f"{path} lacks a usable BERT field: {exc!r}") from exc
    if cfg.hidden % cfg.heads:
        raise ModelConversionError(
            f"hidden_size {cfg.hidden} is not divisible by num_attention_heads {cfg.heads}"
        )
    return cfg


class _Weights:
    """Tensors of a BERT checkpoint, with or without the ``bert.`` prefix, shape-checked."""

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
        prefixes = ("bert.", "model.", "")
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
    cfg: BertConfig
    word: FloatArray  # [vocab, hidden]
    #: Position embeddings with the token-type-0 row folded in (single-sentence input).
    position: FloatArray  # [max_positions, hidden]
    ln_g: FloatArray
    ln_b: FloatArray
    layers: tuple[Layer, ...]


def _load_layer(w: _Weights, cfg: BertConfig, n: int) -> Layer:
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
