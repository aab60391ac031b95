"""What a sentence-transformers model folder says about how its vectors are made.

Read from the files sentence-transformers itself reads, in both layouts found on the hub:
the classic one (``sentence_bert_config.json`` with ``max_seq_length``, pooling as
booleans) and the one sentence-transformers 5-6 writes (``"pooling_mode": "cls"``, the
length from ``tokenizer_config.json``). These facts change vectors, so they feed the
cache fingerprint as well as the encoder. A folder whose vectors lazyembed would not
reproduce (another architecture, an extra module, a pooling mode the runtime lacks) is
refused with `UnsupportedModelError` before any conversion work.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from lazyembed.errors import ModelConversionError, UnsupportedModelError
from lazyembed.models.dense import DenseLayer, read_dense
from lazyembed.models.encoder_config import EncoderConfig, read_config
from lazyembed.models.prompts import Prompts, read_prompts
from lazyembed.models.tokenizer_class import TokenizerClass, tokenizer_class

#: sentence-transformers' pooling modes, by their classic 1_Pooling/config.json flag.
POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
POOLING_MODES = tuple(POOLING_FLAGS.values())
#: What the runtime pools (lazyembed.pooling); `read_model_info` refuses other modes.
RUNTIME_POOLING = POOLING_MODES
#: Modules a folder may chain; anything else would change the vectors.
KNOWN_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
#: Hugging Face writes this (int(1e30)) for "no limit" in tokenizer_config.json.
_NO_LIMIT = 10**29


@dataclass(frozen=True)
class ModelInfo:
    """The encoder-relevant facts of a model folder."""

    dimension: int
    max_seq_length: int
    pooling: str  # one of POOLING_MODES
    normalize: bool
    vocab_size: int
    _: KW_ONLY
    #: config.json: model_type, architectures, sizes, hidden_act, eps, positions, pad id.
    encoder: EncoderConfig
    #: Where max_seq_length came from (a file name; "config.json" when only the model's
    #: position limit applied).
    max_seq_length_source: str
    do_lower_case: bool = False
    #: Pooling over the prompt's tokens too (sentence-transformers' ``include_prompt``).
    include_prompt: bool = True
    #: modules.json module types, in order (empty without modules.json).
    modules: tuple[str, ...] = ()
    prompts: Prompts = field(default_factory=Prompts)
    #: config_sentence_transformers.json; sentence-transformers' default is cosine.
    similarity_fn_name: str = "cosine"
    #: The transformers tokenizer class sentence-transformers tokenizes with.
    tokenizer: TokenizerClass = field(default_factory=lambda: TokenizerClass(None))
    #: Dense modules after the pooling, in order (``dimension`` is the last one's output).
    dense: tuple[DenseLayer, ...] = ()
    #: tokenizer_config.json's padding_side: "left" for Qwen3-Embedding-style decoders.
    padding_side: str = "right"

    def fingerprint_part(self) -> str:
        part = f"seq={self.max_seq_length};pool={self.pooling};norm={int(self.normalize)}"
        if self.do_lower_case:
            part += ";lower=1"
        if not self.include_prompt:
            part += ";prompt=excluded"
        if self.tokenizer.unusual:  # the class changes tokens (a model type's usual: no key)
            part += f";tokenizer_class={self.tokenizer.name}"
            if not self.tokenizer.add_prefix_space:
                part += ",no-prefix-space"
        if self.padding_side != "right":  # rounding only, but keyed apart all the same
            part += f";pad={self.padding_side}"
        if self.dense:
            part += ";dense=" + "|".join(layer.fingerprint_part() for layer in self.dense)
        return part


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelConversionError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelConversionError(f"{path} is not a JSON object")
    return data


def _optional_json(path: Path) -> dict[str, Any]:
    return _read_json(path) if path.is_file() else {}


def _modules(directory: Path) -> list[dict[str, Any]]:
    path = directory / "modules.json"
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelConversionError(f"cannot read {path}: {exc}") from exc
    if not isinstance(entries, list) or not all(isinstance(m, dict) for m in entries):
        raise ModelConversionError(f"{path} is not a list of modules")
    unknown = [str(m.get("type")) for m in entries if _short(m) not in KNOWN_MODULES]
    if unknown:
        raise UnsupportedModelError(
            f"{path} chains modules lazyembed does not run: {', '.join(unknown)}; "
            f"supported: {', '.join(KNOWN_MODULES)}"
        )
    return entries


def _dense(
    directory: Path, modules: list[dict[str, Any]], pooled_width: int
) -> tuple[DenseLayer, ...]:
    """The Dense modules, checked to sit between the Pooling and a final Normalize (the
    only order lazyembed applies), with matching sizes."""
    names = [_short(m) for m in modules]
    if "Dense" not in names:
        return ()
    order = [n for n in names if n != "Transformer"]
    expected = ["Pooling"] + ["Dense"] * names.count("Dense")
    if order not in (expected, [*expected, "Normalize"]):
        raise UnsupportedModelError(
            f"{directory / 'modules.json'} chains {' -> '.join(names)}; lazyembed applies "
            "Dense modules only after the Pooling (and before a final Normalize)"
        )
    layers = tuple(
        read_dense(directory / str(m.get("path") or "")) for m in modules if _short(m) == "Dense"
    )
    width, what = pooled_width, "the pooled vectors' width"
    for layer in layers:
        if width and layer.in_features != width:  # width 0: an export's config lacks it
            raise ModelConversionError(
                f"{layer.weights_path}: in_features {layer.in_features} does not match "
                f"{what} {width}"
            )
        width, what = layer.out_features, "the previous Dense's out_features"
    return layers


def _padding_side(directory: Path) -> str:
    path = directory / "tokenizer_config.json"
    side = _optional_json(path).get("padding_side", "right")
    if side not in ("left", "right"):
        raise ModelConversionError(f"{path}: padding_side {side!r} is neither 'left' nor 'right'")
    return str(side)


def _short(module: dict[str, Any]) -> str:
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def _pooling(directory: Path, modules: list[dict[str, Any]]) -> tuple[str, bool]:
    """(mode, include_prompt) from the Pooling module's config (mean when there is none)."""
    folder = next((str(m.get("path") or "") for m in modules if _short(m) == "Pooling"), "")
    path = directory / (folder or "1_Pooling") / "config.json"
    if not path.is_file():
        return "mean", True
    config = _read_json(path)
    include_prompt = bool(config.get("include_prompt", True))
    mode = config.get("pooling_mode")
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if mode is None:  # the classic layout: one boolean per mode
        flagged = [name for flag, name in POOLING_FLAGS.items() if config.get(flag)]
        if len(flagged) != 1:
            raise UnsupportedModelError(
                f"{path} asks for {len(flagged)} pooling modes ({', '.join(flagged) or 'none'});"
                " lazyembed pools with exactly one"
            )
        mode = flagged[0]
    if mode not in POOLING_MODES:
        raise UnsupportedModelError(
            f"{path}: unknown pooling mode {mode!r}; known: {', '.join(POOLING_MODES)}"
        )
    return str(mode), include_prompt


def _max_seq_length(directory: Path, encoder: EncoderConfig) -> tuple[int, str]:
    """sentence-transformers' rule: the configured length, else min(position limit,
    the tokenizer's model_max_length); never more than the position table numbers."""
    configured = _optional_json(directory / "sentence_bert_config.json").get("max_seq_length")
    if isinstance(configured, int) and configured > 0:
        return min(configured, encoder.max_tokens), "sentence_bert_config.json"
    limit = _optional_json(directory / "tokenizer_config.json").get("model_max_length")
    if isinstance(limit, int | float) and 0 < limit < _NO_LIMIT:
        length = min(int(limit), encoder.max_positions)
        return min(length, encoder.max_tokens), "tokenizer_config.json"
    return encoder.max_tokens, "config.json"


def read_model_info(
    directory: Path,
    *,
    pooling_modes: Collection[str] = RUNTIME_POOLING,
    any_architecture: bool = False,
) -> ModelInfo:
    """Read config.json plus the sentence-transformers side files (defaults where absent).

    ``pooling_modes`` are the modes the caller can apply; another one is refused.
    Without ``modules.json`` the vectors are normalised (lazyembed's default for a bare
    folder); without a pooling config, mean pooling (sentence-transformers' default).
    ``any_architecture``: the transformer runs from its ONNX export (``onnx_export.py``),
    so config.json's architecture is not refused.
    """
    directory = Path(directory)
    encoder = read_config(directory, any_architecture=any_architecture)
    modules = _modules(directory)
    pooling, include_prompt = _pooling(directory, modules)
    if pooling not in pooling_modes:
        raise UnsupportedModelError(
            f"{directory} pools with {pooling!r}; this lazyembed applies "
            f"{', '.join(sorted(pooling_modes))}"
        )
    dense = _dense(directory, modules, encoder.hidden)
    max_seq, source = _max_seq_length(directory, encoder)
    st_config = _optional_json(directory / "sentence_bert_config.json")
    st_model = _optional_json(directory / "config_sentence_transformers.json")
    return ModelInfo(
        dimension=dense[-1].out_features if dense else encoder.hidden,
        max_seq_length=max_seq,
        pooling=pooling,
        normalize=any(_short(m) == "Normalize" for m in modules) if modules else True,
        vocab_size=encoder.vocab,
        encoder=encoder,
        max_seq_length_source=source,
        do_lower_case=bool(st_config.get("do_lower_case", False)),
        include_prompt=include_prompt,
        modules=tuple(str(m.get("type", "")) for m in modules),
        prompts=read_prompts(directory),
        similarity_fn_name=str(st_model.get("similarity_fn_name") or "cosine"),
        tokenizer=tokenizer_class(directory),
        dense=dense,
        padding_side=_padding_side(directory),
    )
