"""Shared converter pieces (graph_ops.py, checkpoint.py, onnx_build.py): focused checks by the
architecture helpers, each named after the architecture that needed it."""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lazyembed.models import onnx_build
from lazyembed.models.checkpoint import Checkpoint
from lazyembed.models.graph_ops import GraphBuilder

# ---- gemma3: the embedding table (262144 x 768) must not be copied while converting ----

_MB4 = (1024, 1024)  # a 4 MB float32 tensor


def _traced_peak(action: object) -> int:
    assert callable(action)
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_gemma3_const_streams_a_weight_without_copying_it(tmp_path: Path) -> None:
    big = np.arange(np.prod(_MB4), dtype=np.float32).reshape(_MB4)
    g = GraphBuilder(tmp_path / "m.onnx.data")
    peak = _traced_peak(lambda: g.const("big", big))
    g.close()
    assert peak < big.nbytes // 4, f"{peak} bytes allocated to write {big.nbytes}"
    raw = (tmp_path / "m.onnx.data").read_bytes()
    assert raw == big.tobytes()  # at offset 0: the first tensor needs no padding


def test_gemma3_bf16_tensor_is_upcast_in_one_buffer(tmp_path: Path) -> None:
    values = np.arange(np.prod(_MB4), dtype=np.uint16).reshape(_MB4) % 0x7F00
    head = json.dumps(
        {"t": {"dtype": "BF16", "shape": list(_MB4), "data_offsets": [0, values.nbytes]}}
    ).encode()
    (tmp_path / "model.safetensors").write_bytes(
        struct.pack("<Q", len(head)) + head + values.astype("<u2").tobytes()
    )
    out: list[np.ndarray] = []
    with Checkpoint(tmp_path) as ckpt:
        peak = _traced_peak(lambda: out.append(ckpt.get("t")))
    want = (values.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(out[0], want)
    assert peak < 1.25 * want.nbytes, f"{peak} bytes allocated for a {want.nbytes}-byte tensor"


def test_gemma3_externalize_copies_weights_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached graph's data file is filled from the optimized graph's data file a chunk
    at a time (never the whole model in memory), aligned, and runs the same."""
    monkeypatch.setattr(onnx_build, "_COPY_CHUNK", 64 << 10, raising=False)
    big = np.random.default_rng(3).standard_normal(_MB4).astype(np.float32)
    g = GraphBuilder(tmp_path / "src.onnx.data")
    x = g.op("Gather", [g.const("table", big), "input_ids"])
    x = g.linear(x, big[:, :64].T.copy(), np.ones(64, np.float32), "l")  # bias stays inline
    src = tmp_path / "src.onnx"
    onnx.save_model(g.finish(x, 64, "test"), str(src))
    dest = tmp_path / "dest.onnx"
    peak = _traced_peak(lambda: onnx_build._externalize(src, dest))
    assert peak < big.nbytes // 4, f"{peak} bytes allocated to copy {big.nbytes}"
    model = onnx.load(str(dest), load_external_data=False)
    places = {
        t.name: {e.key: e.value for e in t.external_data}
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    }
    assert set(places) == {"table", "l.w"}
    assert all(p["location"] == "dest.onnx.data" for p in places.values())
    assert all(int(p["offset"]) % 4096 == 0 for p in places.values())
    feed = {"input_ids": np.array([[0, 5, 1023]]), "attention_mask": np.ones((1, 3), np.int64)}
    runs = [
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        for path in (src, dest)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
