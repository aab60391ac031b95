"""What a sentence-transformers model folder says about pooling and sequence length.

These facts change vectors, so they feed the cache fingerprint as well as the encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazyembed.errors import ModelConversionError


@dataclass(frozen=True)
class ModelInfo:
    """The encoder-relevant facts of a model folder."""

    dimension: int
    max_seq_length: int
    pooling: str
    normalize: bool
    vocab_size: int

    def fingerprint_part(self) -> str:
        return f"seq={self.max_seq_length};pool={self.pooling};norm={int(self.normalize)}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelConversionError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelConversionError(f"{path} is not a JSON object")
    return data


def read_model_info(directory: Path) -> ModelInfo:
    """Read config.json plus the sentence-transformers side files (defaults where absent).

    Without ``sentence_bert_config.json`` the model's own position limit applies; without
    a pooling config, mean pooling (the sentence-transformers default).
    """
    config = _read_json(directory / "config.json")
    hidden = int(config.get("hidden_size", 0))
    if hidden <= 0:
        raise ModelConversionError(f"{directory / 'config.json'} has no hidden_size")
    max_positions = int(config.get("max_position_embeddings", 512))
    max_seq = max_positions
    st_config = directory / "sentence_bert_config.json"
    if st_config.is_file():
        max_seq = int(_read_json(st_config).get("max_seq_length") or max_positions)
    max_seq = min(max_seq, max_positions)

    pooling = "mean"
    pooling_config = directory / "1_Pooling" / "config.json"
    if pooling_config.is_file():
        flags = _read_json(pooling_config)
        if flags.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif flags.get("pooling_mode_max_tokens"):
            pooling = "max"
        if pooling != "mean":
            raise ModelConversionError(
                f"{pooling_config}: only mean pooling is supported, the model asks for {pooling}"
            )
    normalize = True
    modules = directory / "modules.json"
    if modules.is_file():
        entries = json.loads(modules.read_text(encoding="utf-8"))
        normalize = any(str(m.get("type", "")).endswith("Normalize") for m in entries)
    return ModelInfo(
        dimension=hidden,
        max_seq_length=max_seq,
        pooling=pooling,
        normalize=normalize,
        vocab_size=int(config.get("vocab_size", 0)),
    )
