"""The OpenVINO runtime: the precision choice, its compile config, and real vectors.

The precision and config tests use a fake Core (they check what would be asked of
OpenVINO, e.g. bf16 on an AMX CPU this machine is not). The others run the real model on
real OpenVINO and are skipped without the ``openvino`` extra.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lazyembed import Embedder, memory
from lazyembed.cpu import CpuFeatures, cpu_features
from lazyembed.errors import BackendUnavailableError, ClosedError
from lazyembed.runtime import OnnxRuntime, RuntimeSpec
from lazyembed.runtime.openvino import (
    CACHE_SUBDIR,
    OpenVinoRuntime,
    import_openvino,
    load_openvino,
    ov_capabilities,
    resolve_precision,
)

FIXTURES = Path(__file__).parent / "fixtures"
MIN_COSINE = 0.99999
EPYC = CpuFeatures(model_name="AMD EPYC", avx2=True)
AMX = CpuFeatures(
    model_name="Intel Xeon 8480+",
    avx2=True,
    avx512f=True,
    avx512_bf16=True,
    amx_tile=True,
    amx_bf16=True,
)
UNKNOWN = CpuFeatures(model_name="arm64", known=False)


@pytest.fixture(scope="module")
def spec() -> RuntimeSpec:
    return Embedder().prepare().spec


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], np.ndarray]:
    texts = json.loads((FIXTURES / "reference_corpus.json").read_text(encoding="utf-8"))["texts"]
    return texts, np.load(FIXTURES / "reference_vectors.npy")


@pytest.fixture(scope="module")
def ov() -> Any:
    """The openvino module; the tests that need it are skipped without the extra."""
    return pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def ov_cache(ov: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ov-cache")


@pytest.fixture(scope="module")
def runtime(spec: RuntimeSpec, ov_cache: Path) -> Any:
    loaded = load_openvino(spec, precision="auto", cache_dir=ov_cache)
    yield loaded
    loaded.close()


# ---- the precision choice (no OpenVINO needed) ---------------------------------------------


def test_fp32_is_fp32_everywhere() -> None:
    for cpu in (EPYC, AMX, UNKNOWN):
        assert resolve_precision("fp32", cpu, None) == "fp32"


def test_auto_picks_bf16_only_where_the_cpu_has_it() -> None:
    assert resolve_precision("auto", EPYC, {"FP32", "INT8"}) == "fp32"
    assert resolve_precision("auto", EPYC, None) == "fp32"
    assert resolve_precision("auto", AMX, {"FP32", "BF16"}) == "bf16"
    assert resolve_precision("auto", AMX, None) == "bf16"
    assert resolve_precision("auto", CpuFeatures("Zen 4", avx512_bf16=True), None) == "bf16"
    # The flags say yes, OpenVINO says no (an old plugin, a VM hiding AMX state): fp32.
    assert resolve_precision("auto", AMX, {"FP32"}) == "fp32"
    # No /proc/cpuinfo: OpenVINO's word decides, and no word means fp32.
    assert resolve_precision("auto", UNKNOWN, {"FP32", "BF16"}) == "bf16"
    assert resolve_precision("auto", UNKNOWN, None) == "fp32"


def test_bf16_on_a_cpu_without_it_names_the_cpu_and_what_it_lacks() -> None:
    with pytest.raises(BackendUnavailableError) as caught:
        resolve_precision("bf16", EPYC, {"FP32", "INT8"})
    message = str(caught.value)
    assert "AMD EPYC (avx2)" in message
    assert "amx_bf16" in message and "avx512_bf16" in message
    assert '"fp32"' in message
    with pytest.raises(BackendUnavailableError, match="OpenVINO reports no BF16"):
        resolve_precision("bf16", AMX, {"FP32"})
    with pytest.raises(BackendUnavailableError, match="arm64"):
        resolve_precision("bf16", UNKNOWN, None)
    assert resolve_precision("bf16", AMX, {"FP32", "BF16"}) == "bf16"


# ---- what is asked of OpenVINO (a fake Core) -----------------------------------------------


class FakeCompiled:
    def __init__(self, requests: int) -> None:
        self.requests = requests

    def get_property(self, name: str) -> int:
        assert name == "OPTIMAL_NUMBER_OF_INFER_REQUESTS"
        return self.requests

    def create_infer_request(self) -> object:
        return object()


class FakeCore:
    """Records the properties and compile calls a real Core would get."""

    def __init__(self, capabilities: list[str] | None) -> None:
        self.capabilities = capabilities
        self.core_properties: dict[str, str] = {}
        self.compiled: list[tuple[str, str, dict[str, str]]] = []

    def get_property(self, device: str, name: str) -> list[str]:
        assert (device, name) == ("CPU", "OPTIMIZATION_CAPABILITIES")
        if self.capabilities is None:
            raise RuntimeError("no such property")
        return self.capabilities

    def set_property(self, properties: dict[str, str]) -> None:
        self.core_properties.update(properties)

    def compile_model(self, path: str, device: str, config: dict[str, str]) -> FakeCompiled:
        self.compiled.append((path, device, dict(config)))
        return FakeCompiled(1)


def test_amx_cpu_compiles_bf16_with_the_threads_cache_and_mmap(
    spec: RuntimeSpec, tmp_path: Path
) -> None:
    core = FakeCore(["FP32", "BF16", "INT8"])
    loaded = load_openvino(spec, precision="bf16", cache_dir=tmp_path, cpu=AMX, core=core)
    assert loaded.precision == "bf16"
    [(path, device, config)] = core.compiled
    assert (path, device) == (spec.onnx_path, "CPU")
    assert config["INFERENCE_PRECISION_HINT"] == "bf16"
    assert config["INFERENCE_NUM_THREADS"] == str(spec.threads)
    assert config["PERFORMANCE_HINT"] == "LATENCY"
    assert config["CACHE_DIR"] == str(tmp_path / CACHE_SUBDIR)
    assert core.core_properties == {"ENABLE_MMAP": "YES"}


def test_fp32_on_an_amx_cpu_asks_for_f32_explicitly(spec: RuntimeSpec) -> None:
    """OpenVINO would pick bf16 by itself on AMX; fp32 must still mean fp32 there."""
    core = FakeCore(["FP32", "BF16"])
    load_openvino(spec, precision="fp32", cpu=AMX, core=core, hint="THROUGHPUT")
    [(_, _, config)] = core.compiled
    assert config["INFERENCE_PRECISION_HINT"] == "f32"
    assert config["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert "CACHE_DIR" not in config


def test_auto_on_this_kind_of_cpu_compiles_f32(spec: RuntimeSpec) -> None:
    core = FakeCore(None)  # no OPTIMIZATION_CAPABILITIES: the flags alone decide
    assert ov_capabilities(core) is None
    loaded = load_openvino(spec, precision="auto", cpu=EPYC, core=core)
    assert loaded.precision == "fp32"
    assert core.compiled[0][2]["INFERENCE_PRECISION_HINT"] == "f32"


def test_bf16_refused_before_anything_compiles(spec: RuntimeSpec) -> None:
    core = FakeCore(["FP32"])
    with pytest.raises(BackendUnavailableError, match="AMD EPYC"):
        load_openvino(spec, precision="bf16", cpu=EPYC, core=core)
    assert core.compiled == []


def test_missing_openvino_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    with pytest.raises(BackendUnavailableError, match=r"lazyembed\[openvino\]"):
        import_openvino()


# ---- the real model on real OpenVINO ------------------------------------------------------


def _min_cosine(got: np.ndarray, want: np.ndarray) -> float:
    dots = np.einsum("ij,ij->i", got.astype(np.float64), want.astype(np.float64))
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    return float((dots / norms).min())


def test_vectors_match_sentence_transformers_and_onnx_runtime(
    runtime: OpenVinoRuntime, spec: RuntimeSpec, corpus: tuple[list[str], np.ndarray]
) -> None:
    texts, reference = corpus
    got = runtime.encode(texts)
    assert got.vectors.dtype == np.float32 and got.vectors.shape == reference.shape
    assert np.isfinite(got.vectors).all()
    assert _min_cosine(got.vectors, reference) >= MIN_COSINE
    ort = OnnxRuntime(spec)
    try:
        want = ort.encode(texts)
    finally:
        ort.close()
    assert got.token_counts == want.token_counts
    assert _min_cosine(got.vectors, want.vectors) >= MIN_COSINE
    # One text at a time (no padding at all) gives the same vectors as the runs.
    alone = np.stack([runtime.encode([text]).vectors[0] for text in texts[:4]])
    assert _min_cosine(alone, got.vectors[:4]) >= MIN_COSINE


def test_auto_here_is_what_this_cpu_supports(runtime: OpenVinoRuntime, ov: Any) -> None:
    cpu = cpu_features()
    capabilities = ov_capabilities(ov.Core())
    expected = "bf16" if cpu.bf16 and (capabilities is None or "BF16" in capabilities) else "fp32"
    assert runtime.precision == expected
    hint = runtime._compiled.get_property("INFERENCE_PRECISION_HINT")
    assert hint == {"fp32": ov.Type.f32, "bf16": ov.Type.bf16}[expected]


def test_bf16_here_fails_clearly_unless_the_cpu_has_it(spec: RuntimeSpec, ov_cache: Path) -> None:
    cpu = cpu_features()
    if cpu.bf16:
        pytest.skip(f"{cpu.describe()} has bf16 hardware")
    with pytest.raises(BackendUnavailableError) as caught:
        load_openvino(spec, precision="bf16", cache_dir=ov_cache)
    assert cpu.model_name in str(caught.value)


def test_throughput_streams_give_the_same_vectors(
    runtime: OpenVinoRuntime, spec: RuntimeSpec, ov_cache: Path, corpus: tuple[list[str], Any]
) -> None:
    texts = corpus[0][::4]  # every length, over several runs (one run would not overlap)
    queued = load_openvino(spec, precision="fp32", cache_dir=ov_cache, hint="THROUGHPUT")
    try:
        if len(queued._requests) < 2:
            pytest.skip("THROUGHPUT gives one stream here: nothing to overlap")
        got = queued.encode(texts)
    finally:
        queued.close()
    want = runtime.encode(texts)
    assert got.token_counts == want.token_counts
    assert _min_cosine(got.vectors, want.vectors) >= MIN_COSINE


def test_the_compile_cache_is_written_and_used(ov: Any, spec: RuntimeSpec, tmp_path: Path) -> None:
    first = load_openvino(spec, precision="fp32", cache_dir=tmp_path)
    blobs = sorted((tmp_path / CACHE_SUBDIR).iterdir())
    assert blobs, "no compiled blob in the cache dir"
    want = first.encode(["a cached model"]).vectors
    first.close()
    again = load_openvino(spec, precision="fp32", cache_dir=tmp_path)
    assert sorted((tmp_path / CACHE_SUBDIR).iterdir()) == blobs  # imported, not recompiled
    np.testing.assert_allclose(again.encode(["a cached model"]).vectors, want, atol=1e-6)
    again.close()


def test_concurrent_calls_take_turns(runtime: OpenVinoRuntime) -> None:
    texts = [f"sentence number {i} about {'cats ' * (i % 7)}" for i in range(40)]
    want = runtime.encode(texts).vectors
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(runtime.encode(texts).vectors))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    for got in results:
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_close_frees_the_model_before_returning_memory(
    spec: RuntimeSpec, ov_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_openvino(spec, precision="fp32", cache_dir=ov_cache)
    loaded.encode(["warm"])
    compiled = weakref.ref(loaded._compiled)
    request = weakref.ref(loaded._requests[0])
    seen: list[tuple[bool, bool]] = []
    release = memory.release_to_os

    def spy() -> bool:
        gc.collect()
        seen.append((compiled() is None, request() is None))
        return release()

    monkeypatch.setattr(memory, "release_to_os", spy)
    loaded.close()
    assert seen == [(True, True)], "the model was still alive when memory was handed back"
    with pytest.raises(ClosedError, match="after close"):
        loaded.encode(["closed"])


def test_pooling_modes_prompt_and_lowercase_follow_the_spec_as_onnx_runtime_does(
    spec: RuntimeSpec, ov_cache: Path
) -> None:
    other = dataclasses.replace(
        spec,
        pooling=("cls", "max"),
        dimension=2 * spec.dimension,
        lowercase=True,
        include_prompt=False,
    )
    texts = ["Query: Where Do CATS sleep?", "query: a much longer text " * 6, "Q: x"]
    loaded = load_openvino(other, precision="fp32", cache_dir=ov_cache)
    ort = OnnxRuntime(other)
    try:
        got = loaded.encode(texts, prompt_length=3)
        want = ort.encode(texts, prompt_length=3)
        plain = loaded.encode(texts)
    finally:
        loaded.close()
        ort.close()
    assert got.vectors.shape == (3, 2 * spec.dimension)
    assert got.token_counts == want.token_counts
    assert _min_cosine(got.vectors, want.vectors) >= MIN_COSINE
    assert _min_cosine(plain.vectors, got.vectors) < MIN_COSINE  # the prompt really was left out
