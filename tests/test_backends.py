"""The `backend` and `precision` settings reach the runtime: OpenVINO through the Embedder."""

from __future__ import annotations

import numpy as np
import pytest

from lazyembed import BackendUnavailableError, ConfigError, Embedder
from lazyembed.cpu import cpu_features


def test_bf16_is_openvinos_and_onnx_runtime_says_so() -> None:
    with pytest.raises(ConfigError, match="backend='openvino'"):
        Embedder(precision="bf16")


def test_the_openvino_backend_gives_the_same_vectors(shared_embedder: Embedder) -> None:
    pytest.importorskip("openvino")
    texts = ["The cat sits on the mat.", "", "Ünïcödé and emoji 🎉", "word " * 400]
    embedder = Embedder(backend="openvino", cache_memory_mb=0, precision="auto")
    try:
        got = embedder.embed_numpy(texts)
        want = shared_embedder.embed_numpy(texts)
        cosine = (got * want).sum(axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
        )
        assert cosine.min() >= 0.99999
        assert type(embedder.lifecycle.peek()).__name__ == "OpenVinoRuntime"
        assert embedder.unload_model() is True
    finally:
        embedder.close()


def test_bf16_where_the_cpu_lacks_it_explains_itself() -> None:
    pytest.importorskip("openvino")
    if cpu_features().bf16:
        pytest.skip("this CPU has bf16: the refusal cannot be shown here")
    embedder = Embedder(backend="openvino", precision="bf16", cache_memory_mb=0)
    try:
        with pytest.raises(BackendUnavailableError, match="AMX") as info:
            embedder.embed("x")
        assert cpu_features().model_name.split()[0] in str(info.value)
    finally:
        embedder.close()
