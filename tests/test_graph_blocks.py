"""models/graph_ops.py: each shared block run by ONNX Runtime against a numpy reference.

The graphs here take ``input_ids`` ([batch, seq]) into a random embedding table, apply
one block and return [batch, seq, hidden], so every block is checked through the same
inputs the converted models have.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lazyembed.models.graph_ops import GraphBuilder

B, S, H = 2, 7, 16
RNG = np.random.default_rng(7)
TABLE = RNG.standard_normal((50, H)).astype(np.float32)
IDS = RNG.integers(0, 50, (B, S)).astype(np.int64)
MASK = np.ones((B, S), np.int64)
MASK[1, 4:] = 0  # right padding in row 1
X = TABLE[IDS]


def _run(
    build: Callable[[GraphBuilder, str], str], hidden: int = H, mask: np.ndarray = MASK
) -> np.ndarray:
    g = GraphBuilder()
    x = g.op("Gather", [g.const("table", TABLE), "input_ids"])
    model = g.finish(build(g, x), hidden, "test")
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input_ids": IDS, "attention_mask": mask})[0]
    return np.asarray(out)


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _rope(x: np.ndarray, positions: np.ndarray, rotary_dim: int, base: float) -> np.ndarray:
    """Hugging Face's apply_rotary_pos_emb on [b, h, s, d], partial as in NomicBert."""
    inv = 1.0 / base ** (np.arange(0, rotary_dim, 2) / rotary_dim)
    freqs = positions[..., None] * inv
    emb = np.concatenate([freqs, freqs], axis=-1)
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    out = rot * np.cos(emb) + _rotate_half(rot) * np.sin(emb)
    return np.concatenate([out, rest], axis=-1)


def test_norms() -> None:
    w = RNG.standard_normal(H).astype(np.float32)
    b = RNG.standard_normal(H).astype(np.float32)
    rms = _run(lambda g, x: g.rms_norm(x, w, 1e-6, "n"))
    want = X / np.sqrt((X**2).mean(-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(rms, want, rtol=1e-5, atol=1e-5)
    ln = _run(lambda g, x: g.layer_norm(x, w, b, 1e-5, "ln"))
    mu, var = X.mean(-1, keepdims=True), X.var(-1, keepdims=True)
    np.testing.assert_allclose(ln, (X - mu) / np.sqrt(var + 1e-5) * w + b, rtol=1e-4, atol=1e-5)
    no_bias = _run(lambda g, x: g.layer_norm(x, w, None, 1e-5, "ln"))
    np.testing.assert_allclose(no_bias, (X - mu) / np.sqrt(var + 1e-5) * w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("gelu", lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))),
        (
            "gelu_pytorch_tanh",
            lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
        ),
        ("silu", lambda x: x / (1 + np.exp(-x))),
    ],
)
def test_activations(name: str, reference: Callable[[np.ndarray], np.ndarray]) -> None:
    got = _run(lambda g, x: g.activation(x, name))
    np.testing.assert_allclose(got, reference(X.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_unknown_activation_is_refused() -> None:
    with pytest.raises(ValueError, match="relu6"):
        _run(lambda g, x: g.activation(x, "relu6"))


def test_linear_takes_torch_layout() -> None:
    w = RNG.standard_normal((8, H)).astype(np.float32)  # [out, in]
    b = RNG.standard_normal(8).astype(np.float32)
    np.testing.assert_allclose(
        _run(lambda g, x: g.linear(x, w, b, "l"), 8), X @ w.T + b, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        _run(lambda g, x: g.linear(x, w, None, "l"), 8), X @ w.T, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("rotary_dim", [8, 4])  # full and partial rotary of head_dim 8
@pytest.mark.parametrize("per_row", [False, True])
def test_rotary_matches_hugging_face(rotary_dim: int, per_row: bool) -> None:
    heads, head_dim, base = 2, 8, 1000.0

    def build(g: GraphBuilder, x: str) -> str:
        q = g.split_heads(x, heads, head_dim)
        positions = g.positions_from_mask() if per_row else g.positions()
        cos, sin = g.rotary_tables(positions, rotary_dim, base, "rope")
        if per_row:
            cos, sin = (g.op("Unsqueeze", [t, g.ints(1)]) for t in (cos, sin))
        return g.merge_heads(g.rotate(q, cos, sin, head_dim, rotary_dim), heads, head_dim)

    left = np.ones((B, S), np.int64)
    left[1, :3] = 0  # left padding in row 1: per-row positions restart at its first token
    got = _run(build, mask=left if per_row else MASK)
    q = X.reshape(B, S, heads, head_dim).transpose(0, 2, 1, 3)
    if per_row:
        positions = np.maximum(np.cumsum(left, axis=1) - 1, 0) * left
        want = _rope(q, positions[:, None, :].astype(np.float64), rotary_dim, base)
    else:
        want = _rope(q, np.arange(S, dtype=np.float64), rotary_dim, base)
    np.testing.assert_allclose(
        got, want.transpose(0, 2, 1, 3).reshape(B, S, H), rtol=1e-5, atol=1e-5
    )


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_attention_with_padding_and_causal_masks(causal: bool) -> None:
    heads, kv_heads, head_dim = 4, 2, 4
    wq = RNG.standard_normal((heads * head_dim, H)).astype(np.float32)
    wk = RNG.standard_normal((kv_heads * head_dim, H)).astype(np.float32)
    wv = RNG.standard_normal((kv_heads * head_dim, H)).astype(np.float32)

    def build(g: GraphBuilder, x: str) -> str:
        q = g.split_heads(g.linear(x, wq, None, "q"), heads, head_dim)
        k = g.split_heads(g.linear(x, wk, None, "k"), kv_heads, head_dim)
        v = g.split_heads(g.linear(x, wv, None, "v"), kv_heads, head_dim)
        allowed = g.key_padding_allowed()
        if causal:
            allowed = g.both(allowed, g.causal_allowed(g.distance()))
        ctx = g.attention(q, k, v, g.bias_from_allowed(allowed), 0.5, groups=heads // kv_heads)
        return g.merge_heads(ctx, heads, head_dim)

    got = _run(build)
    split = lambda t, n: t.reshape(B, S, n, head_dim).transpose(0, 2, 1, 3)  # noqa: E731
    q, k, v = split(X @ wq.T, heads), split(X @ wk.T, kv_heads), split(X @ wv.T, kv_heads)
    k, v = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)  # head h uses kv head h // 2
    allowed = MASK[:, None, None, :].astype(bool)
    if causal:
        allowed = allowed & np.tril(np.ones((S, S), bool))
    scores = np.where(allowed, q @ k.transpose(0, 1, 3, 2) * 0.5, -np.inf)
    want = (_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(B, S, heads * head_dim)
    real = MASK.astype(bool)
    np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-4)


def test_band_mask_is_the_window_around_each_query() -> None:
    def build(g: GraphBuilder, x: str) -> str:
        band = g.band_allowed(g.distance(), below=2, above=1)  # [S, S]
        bias = g.bias_from_allowed(band)
        shape = g.op("Shape", [x])
        target = g.op(
            "Concat", [g.op("Slice", [shape, g.ints(0), g.ints(1)]), g.ints(S, S)], axis=0
        )
        return g.op("Expand", [bias, target])

    got = _run(build, hidden=S)[0]
    i, j = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
    np.testing.assert_array_equal(got == 0, (j - i >= -2) & (j - i <= 1))
    assert np.all(got[got != 0] == np.finfo(np.float32).min)


def test_weights_stream_to_an_aligned_external_file(tmp_path: Path) -> None:
    big = RNG.standard_normal((H, H)).astype(np.float32)
    data = tmp_path / "model.onnx.data"
    g = GraphBuilder(data)
    x = g.op("Gather", [g.const("table", TABLE), "input_ids"])
    out = g.linear(x, big, np.zeros(H, np.float32), "l")
    model = g.finish(out, H, "test")
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {t.name for t in external} == {"table", "l.w"}  # the small bias stays inline
    offsets = [int(next(e.value for e in t.external_data if e.key == "offset")) for t in external]
    assert all(offset % 4096 == 0 for offset in offsets)
    onnx.save_model(model, str(tmp_path / "model.onnx"))
    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": IDS, "attention_mask": MASK})[0]
    np.testing.assert_allclose(got, X @ big.T, rtol=1e-5, atol=1e-5)


def test_the_data_file_is_never_overwritten(tmp_path: Path) -> None:
    data = tmp_path / "model.onnx.data"
    data.write_bytes(b"someone's")
    with pytest.raises(FileExistsError):
        GraphBuilder(data)
    assert data.read_bytes() == b"someone's"
