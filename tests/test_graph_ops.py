"""The shared graph blocks of models/graph_ops.py against numpy, one block at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from lazyembed.models.graph_ops import GraphBuilder

F32 = npt.NDArray[np.float32]


def _softmax(x: F32) -> F32:
    e = np.exp(x - x.max(-1, keepdims=True))
    return np.asarray(e / e.sum(-1, keepdims=True), np.float32)


# ---- qwen3: grouped-query attention ---------------------------------------------------


def test_qwen3_grouped_query_attention_repeats_each_kv_head_for_its_query_heads() -> None:
    """GQA as transformers' ``repeat_kv``: query head h reads key/value head h // groups
    (sequence length 5, neither the group count nor the head size, so a reshape that
    mixes up axes cannot pass)."""
    rng = np.random.default_rng(0)
    batch, kv, groups, seq, dim = 2, 2, 3, 5, 4
    q = rng.standard_normal((batch, kv * groups, seq, dim)).astype(np.float32)
    k = rng.standard_normal((batch, kv, seq, dim)).astype(np.float32)
    v = rng.standard_normal((batch, kv, seq, dim)).astype(np.float32)
    g = GraphBuilder()
    ctx = g.attention(g.const("q", q), g.const("k", k), g.const("v", v), g.scalar(0.0), 0.5, groups)
    model = g.finish(g.merge_heads(ctx, kv * groups, dim), kv * groups * dim, "gqa")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.zeros((batch, seq), np.int64)
    (got,) = sess.run(None, {"input_ids": ids, "attention_mask": ids + 1})

    k_rep, v_rep = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)
    want = _softmax(q @ k_rep.transpose(0, 1, 3, 2) * 0.5) @ v_rep
    want = want.transpose(0, 2, 1, 3).reshape(batch, seq, kv * groups * dim)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_qwen3_rms_norm_matches_numpy_and_is_fused_by_onnx_runtime(tmp_path: Path) -> None:
    """RMSNorm over the last axis (Qwen3's q/k head norms and layer norms), in the form
    ONNX Runtime's optimizer turns into one SimplifiedLayerNormalization."""
    import onnx

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32) * 3
    w = rng.uniform(0.5, 1.5, 8).astype(np.float32)
    g = GraphBuilder()
    # x times the (all-ones) mask: an input, so the optimizer cannot fold the norm away.
    ones = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=1), g.ints(-1)])
    model = g.finish(g.rms_norm(g.op("Mul", [g.const("x", x), ones]), w, 1e-6, "n"), 8, "rms")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ids = np.zeros((2, 3), np.int64)
    (got,) = sess.run(None, {"input_ids": ids, "attention_mask": ids + 1})
    want = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert "SimplifiedLayerNormalization" in {n.op_type for n in optimized.graph.node}
