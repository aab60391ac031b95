"""The dispatcher: `load_runtime` builds the spec's backend (ONNX Runtime or OpenVINO).

The one module that knows every backend; the backends know only `base`, never each
other. Each backend module is imported when a runtime of its kind is built, and neither
imports its engine (onnxruntime, openvino) before then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lazyembed.errors import ConfigError
from lazyembed.runtime.base import LoadedModel, RuntimeSpec

if TYPE_CHECKING:
    from tokenizers import Tokenizer

#: The backends a `RuntimeSpec` may name (the settings' ``backend`` choices).
BACKENDS = ("onnxruntime", "openvino")


def load_runtime(spec: RuntimeSpec, tokenizer: Tokenizer | None = None) -> LoadedModel:
    """Load the session (and the tokenizer, unless one is given or already held), with
    the spec's backend: ONNX Runtime, or OpenVINO (the ``openvino`` extra).

    No warm-up inference: the first call's run does what it would do, and a reload then
    costs one run less before the first vector. An unknown backend raises `ConfigError`.
    """
    if spec.backend == "onnxruntime":
        from lazyembed.runtime.onnx import OnnxRuntime

        return OnnxRuntime(spec, tokenizer)
    if spec.backend == "openvino":
        from lazyembed.runtime.openvino import load_openvino

        return load_openvino(
            spec,
            precision=spec.precision,  # type: ignore[arg-type]  # checked by the settings
            cache_dir=spec.compile_cache_dir,
            tokenizer=tokenizer,
        )
    raise ConfigError(f"backend = {spec.backend!r}: expected one of {', '.join(BACKENDS)}")
