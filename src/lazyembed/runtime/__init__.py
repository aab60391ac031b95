"""The loaded model, in rooms whose arrows point one way (down):

- `backends`: `load_runtime`, the dispatcher that builds the spec's backend;
- one module per backend: `onnx` (ONNX Runtime, the default), `openvino` (the extra);
- `base`: what they share (`RuntimeSpec`, `EncodeResult`, `LoadedModel`, a call's
  tokenise/sort/plan/pool steps);
- `tokens` (tokenisation) and `batching` (run planning), below them all.

Importing this package never imports onnxruntime or openvino: an isolated parent process
only needs the plain types (`RuntimeSpec`, `EncodeResult`).
"""

from lazyembed.runtime.backends import load_runtime
from lazyembed.runtime.base import EncodeResult, LoadedModel, RuntimeSpec
from lazyembed.runtime.batching import (
    MAX_RUN_TOKENS,
    PAD_GROWTH,
    PAD_SLACK,
    padded_inputs,
    plan_batches,
)
from lazyembed.runtime.onnx import OnnxRuntime, session_options
from lazyembed.runtime.tokens import char_budget, encode_truncated, load_tokenizer, token_counts

__all__ = [
    "MAX_RUN_TOKENS",
    "PAD_GROWTH",
    "PAD_SLACK",
    "EncodeResult",
    "LoadedModel",
    "OnnxRuntime",
    "RuntimeSpec",
    "char_budget",
    "encode_truncated",
    "load_runtime",
    "load_tokenizer",
    "padded_inputs",
    "plan_batches",
    "session_options",
    "token_counts",
]
