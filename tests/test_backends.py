"""The `backend` and `precision` settings reach the runtime: OpenVINO through the Embedder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lazyembed.cpu as cpu_detection
from lazyembed import BackendUnavailableError, ConfigError, Embedder
from lazyembed.cpu import cpu_features
from lazyembed.runtime import openvino as openvino_runtime


def test_bf16_is_openvinos_and_onnx_runtime_says_so() -> None:
    with pytest.raises(ConfigError, match="backend='openvino'"):
        Embedder(precision="bf16")


def test_the_openvino_backend_gives_the_same_vectors(shared_embedder: Embedder) -> None:
    """fp32 pinned: "auto" is bf16 on a bf16 CPU, which meets only the bf16 bar
    (tests/test_openvino.py checks both)."""
    pytest.importorskip("openvino")
    texts = ["The cat sits on the mat.", "", "Ünïcödé and emoji 🎉", "word " * 400]
    embedder = Embedder(backend="openvino", cache_memory_mb=0, precision="fp32")
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


@pytest.mark.parametrize(
    ("cpuinfo", "capabilities", "expected"),
    [
        ("model name\t: AMD EPYC 7B13\nflags\t: avx2 fma\n", {"FP32", "INT8"}, "fp32"),
        (
            "model name\t: AMD EPYC 9B14\nflags\t: avx2 avx512f avx512_bf16\n",
            {"FP32", "BF16"},
            "bf16",
        ),
    ],
    ids=["avx2-only", "avx512-bf16"],
)
def test_auto_through_the_embedder_follows_the_detected_cpu(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cpuinfo: str,
    capabilities: set[str],
    expected: str,
) -> None:
    """The settings' "auto" reaches the detection (a fake /proc/cpuinfo, and OpenVINO's
    reported capabilities of that CPU), on any machine. OpenVINO compiles for real: asked
    for bf16 on a CPU without it, it computes in f32, so only the choice is checked here."""
    pytest.importorskip("openvino")
    fake = tmp_path / "cpuinfo"
    fake.write_text(cpuinfo, encoding="utf-8")
    monkeypatch.setattr(cpu_detection, "CPUINFO", fake)
    monkeypatch.setattr(openvino_runtime, "ov_capabilities", lambda core: frozenset(capabilities))
    embedder = Embedder(backend="openvino", cache_memory_mb=0, precision="auto")
    try:
        embedder.embed("x")
        assert embedder.lifecycle.peek().precision == expected
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
