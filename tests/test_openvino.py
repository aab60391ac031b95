"""The OpenVINO runtime: the precision choice, its compile config, and real vectors.

The precision and config tests use a fake Core (they check what would be asked of
OpenVINO, e.g. bf16 on an AMX CPU this machine is not). The others run the real model on
real OpenVINO and are skipped without the ``openvino`` extra. fp32 vectors must agree with
fp32 ONNX Runtime to `MIN_COSINE`; bf16 ones (on a CPU with bf16) to `BF16_MIN_COSINE`,
the figure the README gives next to the ``precision`` setting. Every fidelity test pins
its precision: ``"auto"`` is bf16 on a bf16 CPU, and is only checked against the bar of
what it chose.
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

import lazyembed.cpu as cpu_detection
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
MIN_COSINE = 0.99999  # fp32 against fp32 (ONNX Runtime, sentence-transformers)
BF16_MIN_COSINE = 0.9999  # bf16 against fp32 ONNX Runtime: README, the `precision` setting
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
    """fp32, whatever the CPU: the fidelity tests demand fp32 agreement of it."""
    loaded = load_openvino(spec, precision="fp32", cache_dir=ov_cache)
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def auto_runtime(spec: RuntimeSpec, ov_cache: Path) -> Any:
    """``precision="auto"``: bf16 on a CPU with bf16 hardware, fp32 elsewhere."""
    loaded = load_openvino(spec, precision="auto", cache_dir=ov_cache)
    yield loaded
    loaded.close()


def bf16_missing_here(ov: Any) -> str | None:
    """Why this machine cannot run bf16 (the library's own refusal), or None if it can."""
    try:
        resolve_precision("bf16", cpu_features(), ov_capabilities(ov.Core()))
    except BackendUnavailableError as refused:
        return str(refused)
    return None


@pytest.fixture(scope="module")
def onnx_vectors(spec: RuntimeSpec, corpus: tuple[list[str], np.ndarray]) -> Any:
    """fp32 ONNX Runtime's vectors and token counts for the corpus (the bar's reference)."""
    ort = OnnxRuntime(spec)
    try:
        return ort.encode(corpus[0])
    finally:
        ort.close()


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
    #: No ports: the runtime reads the graph's inputs (runtime/feeds.py) but never runs here.
    inputs: tuple[object, ...] = ()

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


ZEN3_CPUINFO = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n"
ZEN4_CPUINFO = "model name\t: AMD EPYC 9B14\nflags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n"
SPR_CPUINFO = "model name\t: Intel Xeon 8481C\nflags\t\t: avx2 avx512f amx_bf16 amx_tile\n"


@pytest.mark.parametrize(
    ("cpuinfo", "capabilities", "expected"),
    [
        (ZEN3_CPUINFO, ["FP32", "INT8", "BIN", "EXPORT_IMPORT"], "fp32"),  # this machine
        (ZEN4_CPUINFO, ["FP32", "BF16", "INT8", "BIN", "EXPORT_IMPORT"], "bf16"),  # the issue's
        (SPR_CPUINFO, ["FP32", "BF16", "FP16", "INT8", "BIN", "EXPORT_IMPORT"], "bf16"),
        (ZEN4_CPUINFO, None, "bf16"),  # OpenVINO silent: the flags decide
        (ZEN3_CPUINFO, None, "fp32"),
    ],
    ids=["zen3", "zen4", "sapphire-rapids", "zen4-no-capabilities", "zen3-no-capabilities"],
)
def test_auto_follows_the_detected_cpu(
    spec: RuntimeSpec,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cpuinfo: str,
    capabilities: list[str] | None,
    expected: str,
) -> None:
    """On any machine: the detection reads a fake /proc/cpuinfo and a Core that reports
    what OpenVINO reports on that CPU; nothing passes the answer in (no ``cpu=``)."""
    fake = tmp_path / "cpuinfo"
    fake.write_text(cpuinfo, encoding="utf-8")
    monkeypatch.setattr(cpu_detection, "CPUINFO", fake)
    core = FakeCore(capabilities)
    loaded = load_openvino(spec, precision="auto", core=core)
    assert loaded.precision == expected
    [(_, _, config)] = core.compiled
    assert config["INFERENCE_PRECISION_HINT"] == {"fp32": "f32", "bf16": "bf16"}[expected]


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
    runtime: OpenVinoRuntime, corpus: tuple[list[str], np.ndarray], onnx_vectors: Any
) -> None:
    texts, reference = corpus
    assert runtime.precision == "fp32"
    got = runtime.encode(texts)
    assert got.vectors.dtype == np.float32 and got.vectors.shape == reference.shape
    assert np.isfinite(got.vectors).all()
    assert _min_cosine(got.vectors, reference) >= MIN_COSINE
    want = onnx_vectors
    assert got.token_counts == want.token_counts
    assert _min_cosine(got.vectors, want.vectors) >= MIN_COSINE
    # One text at a time (no padding at all) gives the same vectors as the runs.
    alone = np.stack([runtime.encode([text]).vectors[0] for text in texts[:4]])
    assert _min_cosine(alone, got.vectors[:4]) >= MIN_COSINE


def test_auto_here_is_what_this_cpu_supports(auto_runtime: OpenVinoRuntime, ov: Any) -> None:
    here = cpu_features()
    capabilities = ov_capabilities(ov.Core())
    expected = "bf16" if here.bf16 and (capabilities is None or "BF16" in capabilities) else "fp32"
    assert auto_runtime.precision == expected
    hint = auto_runtime._compiled.get_property("INFERENCE_PRECISION_HINT")
    assert hint == {"fp32": ov.Type.f32, "bf16": ov.Type.bf16}[expected]


def test_auto_vectors_meet_the_bar_of_the_precision_chosen(
    auto_runtime: OpenVinoRuntime, corpus: tuple[list[str], np.ndarray], onnx_vectors: Any
) -> None:
    got = auto_runtime.encode(corpus[0])
    bar = {"fp32": MIN_COSINE, "bf16": BF16_MIN_COSINE}[auto_runtime.precision]
    assert got.token_counts == onnx_vectors.token_counts
    assert _min_cosine(got.vectors, onnx_vectors.vectors) >= bar


def test_bf16_vectors_meet_the_bf16_bar(
    ov: Any,
    spec: RuntimeSpec,
    ov_cache: Path,
    corpus: tuple[list[str], np.ndarray],
    onnx_vectors: Any,
) -> None:
    """Runs wherever the CPU has bf16 hardware (AMX or AVX512-BF16), Zen 4 included."""
    missing = bf16_missing_here(ov)
    if missing is not None:
        pytest.skip(f"no bf16 hardware here (needs amx_bf16 or avx512_bf16): {missing}")
    loaded = load_openvino(spec, precision="bf16", cache_dir=ov_cache)
    try:
        assert loaded.precision == "bf16"
        assert loaded._compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
        got = loaded.encode(corpus[0])
    finally:
        loaded.close()
    assert np.isfinite(got.vectors).all()
    assert got.token_counts == onnx_vectors.token_counts
    assert _min_cosine(got.vectors, onnx_vectors.vectors) >= BF16_MIN_COSINE


def test_bf16_here_fails_clearly_unless_the_cpu_has_it(
    ov: Any, spec: RuntimeSpec, ov_cache: Path
) -> None:
    if bf16_missing_here(ov) is None:
        pytest.skip(f"{cpu_features().describe()} has bf16 hardware: nothing to refuse")
    with pytest.raises(BackendUnavailableError) as caught:
        load_openvino(spec, precision="bf16", cache_dir=ov_cache)
    assert cpu_features().model_name in str(caught.value)


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
