"""The ONNX graph of a BERT-family encoder (BERT, XLM-RoBERTa), emitted node by node.

Why by hand: exporting through torch would pull a 700 MB dependency into a library whose
point is a small footprint. BERT is a fixed, small architecture, so the nodes are emitted
directly with ``onnx.helper``. Two flavours are built from the same weights:

* ``plain`` (default): standard opset-17 ops only (LayerNormalization, Erf GELU, an
  additive attention mask equal to Hugging Face's). It runs on any runtime, it is what
  dynamic int8 quantization works on (the quantizer's shape inference fails on contrib
  ops), and ORT's EXTENDED optimizer already fuses its GELU and scaled Q.K^T.
* ``fused``: ONNX Runtime ``com.microsoft`` contrib ops (``EmbedLayerNormalization``,
  ``Attention`` with packed QKV, ``SkipLayerNormalization``, erf-exact ``BiasGelu`` --
  never the tanh ``FastGelu``). Kept as a cross-check and for re-measuring: on the
  2-core AVX2 host with onnxruntime 1.32 it was *not* faster than ``plain`` (its
  SkipLayerNormalization kernel costs more than Add + LayerNormalization), so it is not
  the default.

The output is ``last_hidden_state`` [batch, seq, hidden]; pooling happens in the runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lazyembed.errors import UnsupportedModelError
from lazyembed.models.bert_weights import Bert, FloatArray, Layer, load_bert
from lazyembed.models.encoder_config import EncoderConfig
from lazyembed.models.graph_ops import MS_DOMAIN, GraphBuilder

if TYPE_CHECKING:  # importing onnx is slow; the cache-hit path must not pay it
    import onnx

#: Bump whenever the emitted graph changes, so stale cached models are not reused.
CONVERTER_VERSION = "2"  # 2: weights in an external, memory-mapped data file

GraphKind = Literal["fused", "plain"]


def check_config(raw: dict[str, Any], path: Path) -> None:
    """Refuse the BERT options this builder does not emit (see ``architectures.py``)."""
    act = raw.get("hidden_act", "gelu")
    if act != "gelu":
        raise UnsupportedModelError(
            f"unsupported hidden_act={act!r} in {path}; only exact 'gelu' (erf) is supported"
        )
    pos_type = raw.get("position_embedding_type") or "absolute"
    if pos_type != "absolute":
        raise UnsupportedModelError(
            f"unsupported position_embedding_type={pos_type!r} in {path}; only 'absolute'"
        )


def build(model_dir: Path, data: Path | None) -> onnx.ModelProto:
    """The default (plain) graph; see `build_onnx_model`."""
    return build_onnx_model(model_dir, graph=DEFAULT_GRAPH, data=data)


#: Which graph flavour each variant is built from (chosen by measurement, see module doc).
DEFAULT_GRAPH: GraphKind = "plain"
INT8_GRAPH: GraphKind = "plain"

_MS_DOMAIN = MS_DOMAIN


def _layer_norm(g: GraphBuilder, x: str, gamma: str, beta: str, eps: float) -> str:
    return g.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=eps)


def _finish(g: GraphBuilder, last: str, cfg: EncoderConfig, kind: GraphKind) -> onnx.ModelProto:
    model = g.finish(last, cfg.hidden, f"bert_{kind}")
    model.producer_version = CONVERTER_VERSION
    return model


# ---- plain: standard ops only ---------------------------------------------------------


def _padding_offset_positions(g: GraphBuilder, cfg: EncoderConfig) -> str:
    """XLM-R's position ids [batch, seq]: cumsum(mask) * mask + pad_token_id.

    Real tokens are numbered from pad_token_id + 1, padding keeps pad_token_id (as
    Hugging Face's ``create_position_ids_from_input_ids``, from the attention mask).
    """
    cum = g.op("CumSum", ["attention_mask", g.const("c_axis1", np.array(1, np.int64))])
    numbered = g.op("Mul", [cum, "attention_mask"])
    return g.op("Add", [numbered, g.const("c_pad", np.array(cfg.pad_token_id, np.int64))])


@dataclass(frozen=True)
class _Shared:
    """Names of the constants every layer of the plain graph uses."""

    split_heads: str
    merge_heads: str
    bias: str  # the additive attention mask [batch, 1, 1, seq]
    scale: str


def _plain_layer(g: GraphBuilder, x: str, layer: Layer, p: str, c: _Shared, eps: float) -> str:
    """One encoder layer: self-attention, Add & LayerNorm, exact-GELU FFN, Add & LayerNorm."""

    def dense(inp: str, w: FloatArray, b: FloatArray, name: str) -> str:
        mm = g.op("MatMul", [inp, g.const(f"{p}{name}_w", w)])
        return g.op("Add", [mm, g.const(f"{p}{name}_b", b)])

    def heads(t: str) -> str:
        return g.op("Reshape", [t, c.split_heads])

    q = g.op("Transpose", [heads(dense(x, layer.wq, layer.bq, "q"))], perm=[0, 2, 1, 3])
    k = g.op("Transpose", [heads(dense(x, layer.wk, layer.bk, "k"))], perm=[0, 2, 3, 1])
    v = g.op("Transpose", [heads(dense(x, layer.wv, layer.bv, "v"))], perm=[0, 2, 1, 3])
    scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), c.scale]), c.bias])
    probs = g.op("Softmax", [scores], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, c.merge_heads])
    attn = g.op("Add", [dense(ctx, layer.wo, layer.bo, "o"), x])
    x = _layer_norm(
        g, attn, g.const(f"{p}ln1_g", layer.ln1_g), g.const(f"{p}ln1_b", layer.ln1_b), eps
    )
    hmid = dense(x, layer.w1, layer.b1, "ffn1")
    # Exact GELU: 0.5 * h * (1 + erf(h / sqrt(2))).
    erf = g.op("Erf", [g.op("Div", [hmid, g.const(f"{p}sqrt2", np.float32(math.sqrt(2)))])])
    gelu = g.op(
        "Mul",
        [
            g.op("Mul", [hmid, g.const(f"{p}half", np.float32(0.5))]),
            g.op("Add", [erf, g.const(f"{p}onef", np.float32(1.0))]),
        ],
    )
    out = g.op("Add", [dense(gelu, layer.w2, layer.b2, "ffn2"), x])
    return _layer_norm(
        g, out, g.const(f"{p}ln2_g", layer.ln2_g), g.const(f"{p}ln2_b", layer.ln2_b), eps
    )


def _build_plain(bert: Bert, g: GraphBuilder) -> onnx.ModelProto:
    """Standard ops only (opset 17): the reference and quantization-friendly graph."""
    from onnx import TensorProto

    cfg = bert.cfg
    head = cfg.hidden // cfg.heads
    word = g.const("word_embeddings", bert.word)
    pos = g.const("position_embeddings", bert.position)
    i64 = np.int64
    if not cfg.positions_from_padding:
        zero = g.const("c_zero", np.array(0, i64))
        one = g.const("c_one", np.array(1, i64))
    split_heads = g.const("c_split_heads", np.array([0, 0, cfg.heads, head], i64))
    merge_heads = g.const("c_merge_heads", np.array([0, 0, cfg.hidden], i64))

    # Embeddings: word[ids] + (position + type0)[positions], then LayerNorm.
    x = g.op("Gather", [word, "input_ids"])
    if cfg.positions_from_padding:
        positions = _padding_offset_positions(g, cfg)
    else:  # BERT: 0..seq for every row
        seq = g.op("Gather", [g.op("Shape", ["input_ids"]), one], axis=0)
        positions = g.op("Range", [zero, seq, one])
    x = g.op("Add", [x, g.op("Gather", [pos, positions])])
    x = _layer_norm(g, x, g.const("emb_ln_g", bert.ln_g), g.const("emb_ln_b", bert.ln_b), cfg.eps)

    # Additive mask [batch, 1, 1, seq]: 0 where attended, a huge negative where padded.
    maskf = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    lowest = np.float32(np.finfo(np.float32).min)
    bias = g.op(
        "Mul",
        [
            g.op("Sub", [g.const("c_onef", np.array(1.0, np.float32)), maskf]),
            g.const("c_lowest", np.array(lowest, np.float32)),
        ],
    )
    bias = g.op("Unsqueeze", [bias, g.const("c_axes12", np.array([1, 2], i64))])
    scale = g.const("c_scale", np.array(1.0 / math.sqrt(head), np.float32))
    shared = _Shared(split_heads, merge_heads, bias, scale)
    for n, layer in enumerate(bert.layers):
        x = _plain_layer(g, x, layer, f"l{n}_", shared, cfg.eps)
    return _finish(g, x, cfg, "plain")


# ---- fused: ONNX Runtime contrib ops --------------------------------------------------


def _fused_layer(
    g: GraphBuilder, x: str, mask32: str, layer: Layer, p: str, cfg: EncoderConfig
) -> str:
    """One encoder layer as Attention (packed QKV), SkipLayerNorm, BiasGelu FFN, SkipLayerNorm."""
    qkv_w = np.concatenate([layer.wq, layer.wk, layer.wv], axis=1)
    qkv_b = np.concatenate([layer.bq, layer.bk, layer.bv])
    ctx = g.op(
        "Attention",
        [x, g.const(f"{p}qkv_w", qkv_w), g.const(f"{p}qkv_b", qkv_b), mask32],
        domain=_MS_DOMAIN,
        num_heads=cfg.heads,
    )
    attn = g.op("MatMul", [ctx, g.const(f"{p}o_w", layer.wo)])
    x = g.op(
        "SkipLayerNormalization",
        [
            attn,
            x,
            g.const(f"{p}ln1_g", layer.ln1_g),
            g.const(f"{p}ln1_b", layer.ln1_b),
            g.const(f"{p}o_b", layer.bo),
        ],
        domain=_MS_DOMAIN,
        epsilon=cfg.eps,
    )
    hmid = g.op("MatMul", [x, g.const(f"{p}ffn1_w", layer.w1)])
    gelu = g.op("BiasGelu", [hmid, g.const(f"{p}ffn1_b", layer.b1)], domain=_MS_DOMAIN)
    out = g.op("MatMul", [gelu, g.const(f"{p}ffn2_w", layer.w2)])
    return g.op(
        "SkipLayerNormalization",
        [
            out,
            x,
            g.const(f"{p}ln2_g", layer.ln2_g),
            g.const(f"{p}ln2_b", layer.ln2_b),
            g.const(f"{p}ffn2_b", layer.b2),
        ],
        domain=_MS_DOMAIN,
        epsilon=cfg.eps,
    )


def _build_fused(bert: Bert, g: GraphBuilder) -> onnx.ModelProto:
    """ONNX Runtime contrib ops (CPU EP): fewer kernels, same math (erf GELU)."""
    from onnx import TensorProto

    cfg = bert.cfg
    ids32 = g.op("Cast", ["input_ids"], to=TensorProto.INT32)
    mask32 = g.op("Cast", ["attention_mask"], to=TensorProto.INT32)
    # BERT: positions 0..seq (the op's default); XLM-R: computed, as in the plain graph.
    position_ids = (
        [
            "",  # mask: not needed, Attention takes mask32
            g.op("Cast", [_padding_offset_positions(g, cfg)], to=TensorProto.INT32),
        ]
        if cfg.positions_from_padding
        else []
    )
    x = g.op(
        "EmbedLayerNormalization",
        [
            ids32,
            "",  # segment_ids: all zero, folded into the position table
            g.const("word_embeddings", bert.word),
            g.const("position_embeddings", bert.position),
            "",  # segment_embedding
            g.const("emb_ln_g", bert.ln_g),
            g.const("emb_ln_b", bert.ln_b),
            *position_ids,
        ],
        domain=_MS_DOMAIN,
        n_out=2,
        epsilon=cfg.eps,
    )
    for n, layer in enumerate(bert.layers):
        x = _fused_layer(g, x, mask32, layer, f"l{n}_", cfg)
    return _finish(g, x, cfg, "fused")


def build_onnx_model(
    model_dir: Path, *, graph: GraphKind = DEFAULT_GRAPH, data: Path | None = None
) -> onnx.ModelProto:
    """Build the (unoptimized) ONNX graph of the BERT or XLM-R model in ``model_dir``;
    ``data``: stream the weights into this external data file (see `GraphBuilder`)."""
    bert = load_bert(Path(model_dir))
    g = GraphBuilder(data)
    try:
        return _build_fused(bert, g) if graph == "fused" else _build_plain(bert, g)
    finally:
        g.close()
