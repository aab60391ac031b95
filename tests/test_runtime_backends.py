"""The runtime's rooms: the dispatcher picks the backend, and no engine loads on import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lazyembed.errors import ConfigError
from lazyembed.runtime import RuntimeSpec, load_runtime
from lazyembed.runtime.backends import BACKENDS


def _spec(backend: str) -> RuntimeSpec:
    return RuntimeSpec(
        onnx_path="/nonexistent/model.onnx",
        tokenizer_path="/nonexistent/tokenizer.json",
        max_seq_length=8,
        dimension=4,
        threads=1,
        batch_size=1,
        backend=backend,
    )


def test_an_unknown_backend_is_a_config_error_naming_the_choices() -> None:
    """Not a silent ONNX Runtime load (as before), nor a missing-file error."""
    with pytest.raises(ConfigError, match=r"'tensorrt'.*onnxruntime, openvino"):
        load_runtime(_spec("tensorrt"))


def test_the_backends_are_the_settings_choices() -> None:
    from typing import get_args

    from lazyembed.config.settings import Backend

    assert set(BACKENDS) == set(get_args(Backend))


def test_importing_the_runtime_and_its_backends_loads_no_engine() -> None:
    code = (
        "import sys\n"
        "import lazyembed.runtime, lazyembed.runtime.onnx, lazyembed.runtime.openvino\n"
        "print(sorted(m for m in ('onnxruntime', 'openvino') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
