"""The architecture a model's ``config.json`` describes, and whether we can convert it.

One reader for the converter and for `info.py`: an architecture no graph builder can
emit (``architectures.py``), or a config option its builder does not implement, is
refused here with `UnsupportedModelError`, before any conversion work.

BERT and XLM-RoBERTa share the encoder; they differ in the embeddings: XLM-R numbers the
positions of real tokens from ``pad_token_id + 1`` (padding keeps ``pad_token_id``) and
has a single token type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazyembed.errors import ModelConversionError, UnsupportedModelError
from lazyembed.models.architectures import BERT_TYPES, architecture, native_model_types

CONFIG_FILE = "config.json"
#: Model types that number positions from their padding index + 1 (pad_token_id, or fixed).
_PADDING_OFFSET_TYPES = frozenset({"xlm-roberta", "roberta", "camembert", "mpnet"})
#: Types whose padding index is fixed in the model code, whatever pad_token_id says
#: (transformers' ``MPNetEmbeddings.padding_idx = 1``).
_FIXED_PADDING_IDX = {"mpnet": 1}


@dataclass(frozen=True)
class EncoderConfig:
    """The fields of ``config.json`` that shape the graph."""

    model_type: str
    architectures: tuple[str, ...]
    hidden: int
    heads: int
    layers: int
    intermediate: int
    hidden_act: str
    eps: float
    vocab: int
    max_positions: int
    type_vocab_size: int
    pad_token_id: int

    @property
    def positions_from_padding(self) -> bool:
        """True for XLM-R: position ids are cumsum(mask) * mask + pad_token_id."""
        return self.model_type in _PADDING_OFFSET_TYPES

    @property
    def max_tokens(self) -> int:
        """The longest input the position table can number (XLM-R loses pad_token_id + 1,
        MPNet 2: its padding index is 1)."""
        if self.positions_from_padding:
            pad = _FIXED_PADDING_IDX.get(self.model_type, self.pad_token_id)
            return self.max_positions - pad - 1
        return self.max_positions


def _load(path: Path, model_dir: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelConversionError(f"{path} is missing; cannot convert {model_dir}") from exc
    except (OSError, ValueError) as exc:
        raise ModelConversionError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelConversionError(f"{path} must hold a JSON object")
    return raw


def _check_supported(raw: dict[str, Any], path: Path) -> None:
    model_type = raw.get("model_type")
    native = native_model_types()
    if model_type not in native:
        raise UnsupportedModelError(
            f"unsupported architecture model_type={model_type!r} in {path}; "
            f"lazyembed converts these model types: {', '.join(sorted(native))}"
        )
    architecture(str(model_type)).check_config(raw, path)


def _first(raw: dict[str, Any], *names: str, default: int = 0) -> int:
    return int(next((raw[name] for name in names if raw.get(name) is not None), default))


def _any_architecture(raw: dict[str, Any], path: Path) -> EncoderConfig:
    """The fields lazyembed reads of a model it runs through its ONNX export (sizes under
    the names architectures use; those the graph alone needs may be absent: 0)."""
    model_type = str(raw.get("model_type") or "unknown")
    try:
        return EncoderConfig(
            model_type=model_type,
            architectures=tuple(str(name) for name in raw.get("architectures") or []),
            hidden=_first(raw, "hidden_size", "n_embd", "d_model", "dim"),
            heads=_first(raw, "num_attention_heads", "n_head"),
            layers=_first(raw, "num_hidden_layers", "n_layer"),
            intermediate=_first(raw, "intermediate_size", "n_inner"),
            hidden_act=str(
                raw.get("hidden_act")
                or raw.get("activation_function")
                or raw.get("hidden_activation")  # ModernBERT
                or ""
            ),
            # ModernBERT's norm_eps first: its hub configs also carry a stale layer_norm_eps
            eps=float(
                raw.get("norm_eps")
                or raw.get("layer_norm_eps")
                or raw.get("layer_norm_epsilon")  # GPT-2 style (NomicBert's hub config)
                or raw.get("rms_norm_eps")
                or 0.0
            ),
            vocab=_first(raw, "vocab_size"),
            max_positions=_first(raw, "max_position_embeddings", "n_positions", default=512),
            type_vocab_size=_first(raw, "type_vocab_size", default=1),
            pad_token_id=_first(
                raw, "pad_token_id", default=1 if model_type in _PADDING_OFFSET_TYPES else 0
            ),
        )
    except (TypeError, ValueError) as exc:
        raise ModelConversionError(f"{path} lacks a usable {model_type} field: {exc!r}") from exc


def read_config(model_dir: Path, *, any_architecture: bool = False) -> EncoderConfig:
    """The architecture fields of ``model_dir/config.json``; unsupported ones are refused
    (``any_architecture``: not refused, for a model run through its ONNX export)."""
    path = model_dir / CONFIG_FILE
    raw = _load(path, model_dir)
    if any_architecture:
        return _any_architecture(raw, path)
    _check_supported(raw, path)
    model_type = str(raw["model_type"])
    if model_type not in BERT_TYPES:  # sizes under the names each architecture uses
        return _any_architecture(raw, path)
    xlmr = model_type == "xlm-roberta"
    try:
        architectures = raw.get("architectures") or []
        cfg = EncoderConfig(
            model_type=model_type,
            architectures=tuple(str(name) for name in architectures),
            hidden=int(raw["hidden_size"]),
            heads=int(raw["num_attention_heads"]),
            layers=int(raw["num_hidden_layers"]),
            intermediate=int(raw["intermediate_size"]),
            hidden_act=str(raw.get("hidden_act", "gelu")),
            eps=float(raw.get("layer_norm_eps", 1e-12)),  # defaults: Hugging Face's
            vocab=int(raw["vocab_size"]),
            max_positions=int(raw.get("max_position_embeddings", 512)),
            type_vocab_size=int(raw.get("type_vocab_size", 2)),
            pad_token_id=int(raw.get("pad_token_id", 1 if xlmr else 0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelConversionError(f"{path} lacks a usable {model_type} field: {exc!r}") from exc
    if cfg.hidden % cfg.heads:
        raise ModelConversionError(
            f"hidden_size {cfg.hidden} is not divisible by num_attention_heads {cfg.heads}"
        )
    if cfg.max_tokens < 1 or cfg.type_vocab_size < 1:
        raise ModelConversionError(f"{path}: no room for a position or token type")
    return cfg
