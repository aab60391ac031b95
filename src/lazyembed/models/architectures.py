"""Which ``config.json`` model types lazyembed converts natively, and who builds each.

One table, `_BUILDERS`: model type -> the module that vets its config and emits its
graph. Everything that asks "does lazyembed convert this?" (the converter, the export
fallback, ``lazyembed models``) reads `native_model_types`, so adding an architecture
is one module and one line here. Modules are imported by name, on demand: this table
imports none of them (they import ``encoder_config``, which reads this table).

A builder module provides (see `Architecture`):

* ``CONVERTER_VERSION``: bumped whenever its graph changes, so cached conversions of
  that architecture are rebuilt;
* ``check_config(raw, path)``: refuses, with `UnsupportedModelError` naming the field,
  every config option it does not implement (never silently wrong vectors); cheap, no
  onnx import;
* ``build(model_dir, data)``: the unoptimized graph, inputs ``input_ids`` and
  ``attention_mask``, output ``last_hidden_state``, large weights streamed to ``data``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    import onnx

#: config.json model_type -> the module that converts it.
_BUILDERS: dict[str, str] = {
    "bert": "lazyembed.models.bert_graph",
    "xlm-roberta": "lazyembed.models.bert_graph",
    "modernbert": "lazyembed.models.modernbert_graph",
    "nomic_bert": "lazyembed.models.nomic_graph",
    "mpnet": "lazyembed.models.mpnet_graph",
    "qwen3": "lazyembed.models.qwen3_graph",
    "gemma3_text": "lazyembed.models.gemma3_graph",
}
#: The types the BERT builder handles (it alone has the ``fused`` flavour).
BERT_TYPES = frozenset({"bert", "xlm-roberta"})


class Architecture(Protocol):
    CONVERTER_VERSION: str

    def check_config(self, raw: dict[str, Any], path: Path) -> None: ...

    def build(self, model_dir: Path, data: Path | None) -> onnx.ModelProto: ...


def native_model_types() -> frozenset[str]:
    """The config.json model types lazyembed converts from safetensors."""
    return frozenset(_BUILDERS)


def architecture(model_type: str) -> Architecture:
    """The builder module of a natively converted model type (KeyError otherwise)."""
    return cast(Architecture, importlib.import_module(_BUILDERS[model_type]))


def converter_version(model_type: str) -> str:
    return architecture(model_type).CONVERTER_VERSION
