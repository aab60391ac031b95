"""The ONNX graph of an MPNet encoder (``model_type: mpnet``), emitted node by node.

As transformers' ``modeling_mpnet.py``: word + position embeddings (no token types),
LayerNorm; then post-norm layers (q/k/v/o with biases, Add & LayerNorm, intermediate
with ``hidden_act``, Add & LayerNorm). What sets MPNet apart:

* positions are numbered from ``padding_idx + 1``, with ``padding_idx`` fixed at 1 (not
  ``pad_token_id``), and a token whose id is 1 is not counted (as
  ``create_position_ids_from_input_ids``); here a token counts when its id is not 1
  *and* the attention mask marks it real, so padding of any id on either side shifts
  nothing;
* one relative position bias ``[1, heads, seq, seq]``, computed once from
  ``encoder.relative_attention_bias`` and added to every layer's scores. transformers
  always buckets with 32 buckets and max distance 128, whatever
  ``relative_attention_num_buckets`` says (it only sizes the table), so this does too.
  The buckets are computed in the graph from the distance matrix with integer ops:
  ``min(|d|, 8)`` plus how many of the log-bucket thresholds ``|d|`` reaches (taken
  at build time from transformers' float32 formula), plus 16 when the key is after
  the query. No float ``log`` runs in the graph, so no rounding at a bucket edge can
  differ from torch's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from lazyembed.errors import UnsupportedModelError
from lazyembed.models.checkpoint import Checkpoint
from lazyembed.models.encoder_config import EncoderConfig, read_config
from lazyembed.models.graph_ops import I64, GraphBuilder

if TYPE_CHECKING:  # importing onnx is slow; the cache-hit path must not pay it
    import onnx

#: Bump whenever the emitted graph changes, so stale cached models are not reused.
CONVERTER_VERSION = "1"

#: transformers' ``MPNetEmbeddings.padding_idx`` (fixed, not read from the config).
PADDING_IDX = 1
#: What ``MPNetEncoder.compute_position_bias`` passes to ``relative_position_bucket``.
NUM_BUCKETS = 32
MAX_DISTANCE = 128
#: The activations `GraphBuilder.activation` emits as transformers' ``ACT2FN`` does.
_ACTIVATIONS = frozenset({"gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "silu", "swish"})
#: The weights may sit under these prefixes (a checkpoint saved from a task head).
_PREFIXES = ("mpnet.",)


def check_config(raw: dict[str, Any], path: Path) -> None:
    """Refuse the MPNet options this builder does not emit (see ``architectures.py``)."""
    act = raw.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise UnsupportedModelError(
            f"unsupported hidden_act={act!r} in {path}; MPNet is converted with "
            f"{', '.join(sorted(_ACTIVATIONS))}"
        )
    buckets = raw.get("relative_attention_num_buckets", NUM_BUCKETS)
    if not isinstance(buckets, int) or buckets < NUM_BUCKETS:
        raise UnsupportedModelError(
            f"unsupported relative_attention_num_buckets={buckets!r} in {path}; transformers "
            f"looks up {NUM_BUCKETS} buckets, so the table needs at least that many"
        )
    hidden, heads = raw.get("hidden_size", 768), raw.get("num_attention_heads", 12)
    if not isinstance(hidden, int) or not isinstance(heads, int) or heads < 1 or hidden % heads:
        raise UnsupportedModelError(
            f"unsupported hidden_size={hidden!r} with num_attention_heads={heads!r} in "
            f"{path}; the hidden size must split evenly into the heads"
        )


def bucket_thresholds(
    num_buckets: int = NUM_BUCKETS, max_distance: int = MAX_DISTANCE
) -> npt.NDArray[np.int64]:
    """The distances ``|d| >= max_exact`` at which transformers' log bucket goes up by
    one (``relative_position_bucket`` in float32, evaluated once per distance)."""
    half = num_buckets // 2
    max_exact = half // 2
    n = np.arange(max_exact, max_distance + 1, dtype=np.int64)
    scaled = (
        np.log(n.astype(np.float32) / np.float32(max_exact))
        / np.float32(math.log(max_distance / max_exact))
        * np.float32(half - max_exact)
    )
    large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
    return np.array(
        [int(n[np.argmax(large >= b)]) for b in range(max_exact + 1, half)], dtype=np.int64
    )


def _position_bias(g: GraphBuilder, table: npt.NDArray[np.float32]) -> str:
    """[1, heads, seq, seq]: ``table[bucket(key - query)]`` transposed to heads first."""
    half = NUM_BUCKETS // 2
    distance = g.distance()  # key - query, as transformers' relative_position
    far = g.op("Abs", [distance])
    exact = g.op("Min", [far, g.scalar(half // 2, I64)])
    reached = g.op(
        "GreaterOrEqual",
        [g.op("Unsqueeze", [far, g.ints(-1)]), g.const("mpnet.thresholds", bucket_thresholds())],
    )
    steps = g.op("ReduceSum", [g.op("Cast", [reached], to=7), g.ints(-1)], keepdims=0)  # INT64
    after = g.op("Cast", [g.op("Greater", [distance, g.scalar(0, I64)])], to=7)
    side = g.op("Mul", [after, g.scalar(half, I64)])
    bucket = g.op("Add", [g.op("Add", [exact, steps]), side])
    values = g.op("Gather", [g.const("mpnet.relative_attention_bias", table), bucket])
    heads_first = g.op("Transpose", [values], perm=[2, 0, 1])
    return g.op("Unsqueeze", [heads_first, g.ints(0)])


def _positions(g: GraphBuilder) -> str:
    """[batch, seq] position ids: real tokens (id != 1, mask 1) numbered from 2, the
    others at ``padding_idx`` (see the module docstring)."""
    not_pad = g.op("Not", [g.op("Equal", ["input_ids", g.scalar(PADDING_IDX, I64)])])
    real = g.op("Cast", [g.op("And", [not_pad, g.op("Cast", ["attention_mask"], to=9)])], to=7)
    numbered = g.op("Mul", [g.op("CumSum", [real, g.scalar(1, I64)]), real])
    return g.op("Add", [numbered, g.scalar(PADDING_IDX, I64)])


def _layer(
    g: GraphBuilder, w: Checkpoint, x: str, bias: str, p: str, cfg: EncoderConfig, eps: float
) -> str:
    """One post-norm layer: self-attention, Add & LayerNorm, FFN, Add & LayerNorm."""
    h, heads, inter = cfg.hidden, cfg.heads, cfg.intermediate
    head_dim = h // heads

    def linear(x: str, name: str, out: int, inp: int) -> str:
        weight, b = w.get(f"{p}{name}.weight", (out, inp)), w.get(f"{p}{name}.bias", (out,))
        return g.linear(x, weight, b, p + name)

    def norm(x: str, name: str) -> str:
        gamma, beta = w.get(f"{p}{name}.weight", (h,)), w.get(f"{p}{name}.bias", (h,))
        return g.layer_norm(x, gamma, beta, eps, p + name)

    q, k, v = (
        g.split_heads(linear(x, f"attention.attn.{t}", h, h), heads, head_dim) for t in "qkv"
    )
    ctx = g.merge_heads(g.attention(q, k, v, bias, 1.0 / math.sqrt(head_dim)), heads, head_dim)
    x = norm(g.op("Add", [linear(ctx, "attention.attn.o", h, h), x]), "attention.LayerNorm")
    mid = g.activation(linear(x, "intermediate.dense", inter, h), cfg.hidden_act or "gelu")
    return norm(g.op("Add", [linear(mid, "output.dense", h, inter), x]), "output.LayerNorm")


def build(model_dir: Path, data: Path | None) -> onnx.ModelProto:
    """The unoptimized graph of the MPNet model in ``model_dir`` (see `GraphBuilder`)."""
    cfg = read_config(model_dir)
    h, heads = cfg.hidden, cfg.heads
    eps = cfg.eps or 1e-12  # transformers' default when config.json omits it
    g = GraphBuilder(data)
    try:
        with Checkpoint(model_dir, _PREFIXES) as w:
            word = w.get("embeddings.word_embeddings.weight", (cfg.vocab or None, h))
            tokens = g.op("Gather", [g.const("word_embeddings", word), "input_ids"])
            del word
            pos = w.get("embeddings.position_embeddings.weight", (cfg.max_positions, h))
            places = g.op("Gather", [g.const("position_embeddings", pos), _positions(g)])
            del pos
            emb_g, emb_b = (
                w.get("embeddings.LayerNorm.weight", (h,)),
                w.get("embeddings.LayerNorm.bias", (h,)),
            )
            x = g.layer_norm(g.op("Add", [tokens, places]), emb_g, emb_b, eps, "emb_ln")
            table = w.get("encoder.relative_attention_bias.weight", (None, heads))[:NUM_BUCKETS]
            position_bias = _position_bias(g, np.ascontiguousarray(table))
            padding = g.bias_from_allowed(g.key_padding_allowed())
            bias = g.op("Add", [position_bias, padding])  # [batch, heads, seq, seq], once
            for n in range(cfg.layers):
                x = _layer(g, w, x, bias, f"encoder.layer.{n}.", cfg, eps)
        model = g.finish(x, h, "mpnet")
    finally:
        g.close()
    model.producer_version = CONVERTER_VERSION
    return model
