"""The loaded model: tokenisation (`tokens`), run planning (`batching`), the ONNX Runtime
session and pooling (`onnx`).

Importing this package never imports onnxruntime: an isolated parent process only needs
the plain types (`RuntimeSpec`, `EncodeResult`).
"""

from lazyembed.runtime.batching import (
    MAX_RUN_TOKENS,
    PAD_GROWTH,
    PAD_SLACK,
    padded_inputs,
    plan_batches,
)
from lazyembed.runtime.onnx import (
    EncodeResult,
    LoadedModel,
    OnnxRuntime,
    RuntimeSpec,
    load_runtime,
    session_options,
)
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
