"""Which transformers tokenizer class sentence-transformers would tokenize a folder with.

transformers 5 builds some classes' pipelines itself rather than from tokenizer.json
(`XLMRobertaTokenizer` rebuilds its pre-tokenizer), so the class changes the tokens, hence
the vectors. `runtime/tokens.py` builds the tokenizer from it; `models/info.py` keys the
embedding cache on it where it is not the model type's usual one. Reads two small JSON
files, imports nothing heavy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: transformers 5's tokenizer class for a model type without a ``tokenizer_class``
#: (its TOKENIZER_MAPPING_NAMES, for the architectures lazyembed runs).
CLASS_OF_MODEL_TYPE = {"bert": "BertTokenizer", "xlm-roberta": "XLMRobertaTokenizer"}


@dataclass(frozen=True)
class TokenizerClass:
    """The class AutoTokenizer loads (None: unknown) and the model type's usual one."""

    name: str | None
    #: tokenizer_config.json's ``add_prefix_space`` (transformers' default: True).
    add_prefix_space: bool = True
    usual: str | None = None

    @property
    def unusual(self) -> bool:
        """Not what the model type gets by default (the cache keys such folders apart)."""
        return self.name != self.usual or not self.add_prefix_space


def tokenizer_class(folder: Path) -> TokenizerClass:
    """As AutoTokenizer decides (no remote code): tokenizer_config.json's
    ``tokenizer_class``, else config.json's, else the class of config.json's
    ``model_type``; "XLMRobertaTokenizerFast" is "XLMRobertaTokenizer"."""
    tokenizer_config = _json_object(folder / "tokenizer_config.json")
    config = _json_object(folder / "config.json")
    usual = CLASS_OF_MODEL_TYPE.get(str(config.get("model_type")))
    named = tokenizer_config.get("tokenizer_class") or config.get("tokenizer_class")
    name = named.removesuffix("Fast") if isinstance(named, str) and named else usual
    add_prefix_space = tokenizer_config.get("add_prefix_space", True) is not False
    return TokenizerClass(name, add_prefix_space, usual)


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} when it is missing or not an object (then the
    tokenizer.json alone decides, as for a folder without these files)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
